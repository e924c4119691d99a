"""``featstore finetune``: the whole network trained on the images, by the probes'
protocol."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from featstore.cli._shared import (
    DEFAULT_STORE,
    BootstrapOpt,
    DataOpt,
    FractionsOpt,
    ImageSizeOpt,
    JsonOpt,
    OnError,
    Precision,
    PrecisionOpt,
    RecomputeOpt,
    RootOpt,
    SeedsOpt,
    StoreOpt,
    TaskOpt,
    app,
    err,
    load_data,
    print_probe_records,
    split_option,
)


@app.command()
def finetune(
    data: DataOpt,
    backbone: Annotated[list[str], typer.Option(
        "--backbone", "-b", help="A backbone spec as for extract (repeat for several); "
        "@random trains from scratch.")],
    store: StoreOpt = DEFAULT_STORE,
    fractions: FractionsOpt = "1.0",
    seeds: SeedsOpt = 1,
    epochs: Annotated[int, typer.Option(help="Epochs; the best on val is kept.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    accum_steps: Annotated[int, typer.Option(
        help="Steps per optimiser update (effective batch = batch size x this).")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (after warmup).")] = 1e-3,
    optimizer: Annotated[str, typer.Option(metavar="[adamw|sgd]",
                                           help="timm optimizer.")] = "adamw",
    weight_decay: Annotated[float, typer.Option(help="Not applied to norms and biases.")]
    = 0.05,
    warmup_epochs: Annotated[int | None, typer.Option(
        help="Linear warmup, then cosine (default: 1, or 0 for a 1-epoch run).")] = None,
    layer_decay: Annotated[float | None, typer.Option(
        help="ViT: scale each block's rate by this per block from the top.")] = None,
    freeze_until: Annotated[str | None, typer.Option(
        metavar="MODULE", help="Freeze the backbone up to and including this module "
        "(layer2, blocks.5): partial finetuning.")] = None,
    hflip: Annotated[bool, typer.Option(
        help="Random horizontal flips (--no-hflip where side matters).")] = True,
    init_head: Annotated[str, typer.Option(
        metavar="[fresh|probe]", help="probe: start the head from the linear probe cached "
        "for the same backbone, fraction and seed (LP-FT).")] = "fresh",
    image_size: ImageSizeOpt = None,
    precision: PrecisionOpt = Precision.fp32,
    bootstrap: BootstrapOpt = 1000,
    device: Annotated[str, typer.Option(
        help="Torch device: cpu, cuda, cuda:1, or auto (this rank's GPU when there is one).",
    )] = "cpu",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    on_error: Annotated[OnError, typer.Option(
        help="An unreadable image (every one is decoded before epoch 1): fail (stop, naming "
             "it) or skip (leave its row out of train, val and test).")] = OnError.fail,
    recompute: RecomputeOpt = False,
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Finetune backbones on the images over fractions x seeds: best epoch on val, scored on
    test (+CI), persisted beside the probes; a killed run resumes from its last epoch."""
    from featstore.finetune import FinetuneConfig, finetune_grid
    from featstore.models.registry import backbone_spec
    from featstore.report.progress import RichFinetuneProgress
    from featstore.store import FeatureStore

    if workers < 0:
        raise typer.BadParameter(f"--workers {workers}: expected 0 or more")
    manifest = load_data(data, root, task)
    fs = FeatureStore(store)
    specs = [backbone_spec(fs, b, input_size=image_size) for b in backbone]
    config = FinetuneConfig(task=manifest.task, epochs=epochs, batch_size=batch_size,
                            accum_steps=accum_steps, lr=lr, optimizer=optimizer,
                            weight_decay=weight_decay,
                            warmup_epochs=warmup_epochs if warmup_epochs is not None
                            else min(1, epochs - 1),
                            layer_decay=layer_decay, freeze_until=freeze_until, hflip=hflip,
                            init_head=init_head,
                            precision=precision.value, n_bootstrap=bootstrap)
    records = finetune_grid(manifest, specs, config, store=fs,
                            fractions=split_option(fractions, "--fractions"), seeds=seeds,
                            device=device, num_workers=workers, recompute=recompute,
                            progress=RichFinetuneProgress(err, "finetune"),
                            on_error=on_error.value)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for the job
        return
    print_probe_records(records, as_json)
