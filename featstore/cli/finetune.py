"""``featstore finetune``: the whole network trained on the images, by the probes'
protocol."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Annotated

import typer

from featstore import options
from featstore.cli._shared import (
    DEFAULT_FRACTIONS,
    DEFAULT_GRID,
    DEFAULT_STORE,
    BootstrapOpt,
    DataOpt,
    DeviceOpt,
    FractionsOpt,
    ImageSizeOpt,
    JsonOpt,
    OnError,
    Precision,
    RecomputeOpt,
    RootOpt,
    SeedsOpt,
    StoreOpt,
    TaskOpt,
    app,
    checked,
    config_option,
    err,
    grid_settings,
    load_data,
    print_probe_records,
)
from featstore.finetune.config import FinetuneConfig, FinetuneSettings


def _opt(name: str, *decls: str, **kw) -> typer.models.OptionInfo:
    return config_option(FinetuneConfig, name, *decls, **kw)


def _default(name: str):
    return options.default(FinetuneConfig, name)


_PRECISION = Precision(_default("precision"))
_ON_ERROR = OnError(options.default(FinetuneSettings, "on_error"))


def _run(name: str, *decls: str, **kw) -> typer.models.OptionInfo:
    return config_option(FinetuneSettings, name, *decls, **kw)


@app.command()
def finetune(
    data: DataOpt,
    backbone: Annotated[list[str], typer.Option(
        "--backbone", "-b", help="A backbone spec as for extract (repeat for several); "
        "@random trains from scratch.")],
    store: StoreOpt = DEFAULT_STORE,
    fractions: FractionsOpt = DEFAULT_FRACTIONS,
    seeds: SeedsOpt = DEFAULT_GRID.seeds,
    epochs: Annotated[int, _opt("epochs")] = _default("epochs"),
    batch_size: Annotated[int, _opt("batch_size")] = _default("batch_size"),
    accum_steps: Annotated[int, _opt("accum_steps")] = _default("accum_steps"),
    lr: Annotated[float, _opt("lr")] = _default("lr"),
    optimizer: Annotated[str, _opt("optimizer")] = _default("optimizer"),
    weight_decay: Annotated[float, _opt("weight_decay")] = _default("weight_decay"),
    warmup_epochs: Annotated[int | None, _opt("warmup_epochs")] = _default("warmup_epochs"),
    layer_decay: Annotated[float | None, _opt("layer_decay")] = _default("layer_decay"),
    freeze_until: Annotated[str | None, _opt("freeze_until", metavar="MODULE")]
    = _default("freeze_until"),
    hflip: Annotated[bool, _opt("hflip")] = _default("hflip"),
    init_head: Annotated[str, _opt("init_head")] = _default("init_head"),
    image_size: ImageSizeOpt = None,
    precision: Annotated[Precision, _opt("precision", metavar=None)] = _PRECISION,
    bootstrap: BootstrapOpt = DEFAULT_GRID.n_bootstrap,
    device: DeviceOpt = DEFAULT_GRID.device,
    workers: Annotated[int, _run("workers")] = options.default(FinetuneSettings, "workers"),
    on_error: Annotated[OnError, _run("on_error", metavar=None)] = _ON_ERROR,
    recompute: RecomputeOpt = False,
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Finetune backbones on the images over fractions x seeds: best epoch on val, scored on
    test (+CI), persisted beside the probes; a killed run resumes from its last epoch."""
    from featstore.finetune import finetune_grid
    from featstore.models.registry import backbone_spec
    from featstore.report.progress import RichFinetuneProgress
    from featstore.store import FeatureStore

    recipe = {k: v for k, v in locals().items()  # the options FinetuneConfig declares
              if k in options.constraints(FinetuneConfig, where="both")}
    config = checked(FinetuneConfig(**recipe, precision=precision.value,
                                    n_bootstrap=bootstrap))
    grid = grid_settings(fractions, seeds, bootstrap, device)
    settings = checked(FinetuneSettings(workers=workers, on_error=on_error.value))
    manifest = load_data(data, root, task)
    fs = FeatureStore(store)
    specs = [backbone_spec(fs, b, input_size=image_size) for b in backbone]
    records = finetune_grid(manifest, specs, replace(config, task=manifest.task), store=fs,
                            fractions=grid.fractions, seeds=seeds, device=device,
                            recompute=recompute, **settings.kwargs(),
                            progress=RichFinetuneProgress(err, "finetune"))
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for the job
        return
    print_probe_records(records, as_json)
