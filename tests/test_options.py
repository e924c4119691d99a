"""Each stage option is declared once, in its config dataclass: the command line, the pipeline
file's schema, the torchrun argv and the checks are read off it and cannot drift apart."""

from __future__ import annotations

import click
import pytest
import typer

from featstore import options
from featstore.cli import app
from featstore.errors import FeatstoreError, FinetuneError
from featstore.extract.config import ExtractConfig
from featstore.finetune.config import FinetuneConfig, FinetuneSettings
from featstore.fusion.config import FuseConfig
from featstore.pipeline.spec import SCHEMA
from featstore.probe.config import ProbeConfig
from tests.conftest import SIZE, TINY


def cli_params(command: str) -> dict[str, click.Parameter]:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


def comma_list(values):
    return ",".join(map(str, values))


@pytest.mark.parametrize("command, cls, renamed", [
    ("extract", ExtractConfig, {"compile": "compile_model"}),
    ("finetune", FinetuneConfig, {}),
    ("finetune", FinetuneSettings, {}),
    ("probe", ProbeConfig, {}),
    ("fuse", FuseConfig, {"attentions": "attention"}),
])
def test_every_config_option_is_a_cli_option_with_the_configs_help_and_default(
        command, cls, renamed):
    params = cli_params(command)
    for name, c in options.constraints(cls).items():
        if c.where not in ("both", "cli"):  # the front end fills it in (the manifest's task)
            continue
        p = params[renamed.get(name, c.flag or name)]
        flag = "attention" if name == "attentions" else c.flag or name
        assert p.opts == ["--" + flag.replace("_", "-")]
        want = options.default(cls, name)
        if name != "n_bootstrap":  # --bootstrap is shared by the probing verbs
            assert p.help == c.help
        got = p.default.value if hasattr(p.default, "value") else p.default
        if isinstance(want, tuple):  # a list option is comma-separated on the command line
            assert got in (comma_list(want), None), name  # None: the config's default
        else:
            assert got == want, name


@pytest.mark.parametrize("stage, cls", [("extract", ExtractConfig),
                                        ("finetune", FinetuneConfig),
                                        ("finetune", FinetuneSettings),
                                        ("probe", ProbeConfig), ("fuse", FuseConfig)])
def test_a_pipeline_stage_takes_the_configs_keys(stage, cls):
    keys = {c.flag or n for n, c in options.constraints(cls, where="both").items()}
    assert keys <= set(SCHEMA[stage])
    if stage == "extract":  # nothing else
        assert keys == set(SCHEMA[stage])


def test_library_errors_name_the_parameter_and_each_front_end_words_it():
    with pytest.raises(FinetuneError) as e:
        FinetuneConfig(epochs=3, warmup_epochs=3).check()
    assert str(e.value) == "warmup_epochs = 3: expected 0 to epochs - 1"
    assert options.cli_message(e.value) == "--warmup-epochs 3: expected 0 to epochs - 1"
    assert options.file_message(e.value, "finetune").startswith("[finetune] warmup_epochs = 3")
    with pytest.raises(FeatstoreError) as e:
        ExtractConfig(shard_rows=0).check()
    assert options.cli_message(e.value) == "--shard-rows 0: expected at least 1"


def test_the_warmup_default_is_one_rule_in_one_place():
    assert FinetuneConfig(epochs=1).warmup_epochs == 0
    assert FinetuneConfig(epochs=5).warmup_epochs == 1
    assert FinetuneConfig(epochs=5, warmup_epochs=3).warmup_epochs == 3
    # a TOML integer and a float are one run (the run id hashes the config)
    assert FinetuneConfig(lr=1).recipe() == FinetuneConfig(lr=1.0).recipe()


def test_a_torchrun_extract_step_gets_the_settings_the_step_has_in_process(
        monkeypatch, npz_file, store_dir):
    import featstore.extract
    from featstore.cli import main
    from featstore.pipeline.run import _run_step, extract_argv

    calls = []
    monkeypatch.setattr(featstore.extract, "extract_embeddings",
                        lambda manifest, specs, fs, **kw: calls.append(kw) or [])
    args = {"stage": "extract", "data": str(npz_file), "store": str(store_dir),
            "precision": "bf16", "dtype": "float16", "batch_size": 7, "workers": 0,
            "shard_rows": 9, "on_error": "skip", "resize": "cpu", "device": "cpu",
            "backbones": [{"spec": TINY, "image_size": SIZE, "precision": "bf16",
                           "dtype": "float16", "name": "b"}]}
    _run_step(args)
    with pytest.raises(SystemExit) as code:
        main(extract_argv(args))
    assert code.value.code == 0
    in_process, relaunched = calls
    assert relaunched == {**in_process, "progress": relaunched["progress"]}
    assert in_process["shard_rows"] == 9 and in_process["num_workers"] == 0


def test_the_python_api_defaults_are_the_configs():
    import inspect

    from featstore.extract import extract_embeddings
    from featstore.fusion import fuse_grid

    for fn, config in ((extract_embeddings, ExtractConfig()), (fuse_grid, FuseConfig())):
        params = inspect.signature(fn).parameters
        for name, value in config.kwargs().items():
            default = params[name].default
            assert (list(default) if isinstance(default, tuple) else default) == value, name


def test_a_list_option_checks_each_item_and_a_file_list_runs_as_the_cli_tuple():
    with pytest.raises(FeatstoreError) as e:  # the first bad item is named
        options.check(ProbeConfig(l2_grid=[1.0, 0.0, -1.0]), FeatstoreError)
    assert options.cli_message(e.value) == "--l2-grid 0.0: expected a value > 0"
    with pytest.raises(FeatstoreError) as e:
        options.check(ProbeConfig(ks=[5, 0]), FeatstoreError)
    assert options.cli_message(e.value) == "--ks 0: expected at least 1"
    with pytest.raises(FeatstoreError) as e:
        options.check(ProbeConfig(ks=[]), FeatstoreError)
    assert str(e.value) == "ks = (): expected at least one value"
    # TOML integers and a list: the run id of the CLI's float tuple
    assert (ProbeConfig(l2_grid=[1, 10], ks=[5]).run_id("k")
            == ProbeConfig(l2_grid=(1.0, 10.0), ks=(5,)).run_id("k"))


def test_whole_numbers_are_worded_as_such_and_a_timeout_may_be_infinite():
    with pytest.raises(FeatstoreError) as e:
        ExtractConfig(workers=-1).check()
    assert options.cli_message(e.value) == "--workers -1: expected at least 0"
    with pytest.raises(FeatstoreError) as e:
        FinetuneConfig(weight_decay=float("inf")).check()
    assert str(e.value) == "weight_decay = inf: expected a finite value >= 0"
    ExtractConfig(claim_timeout=float("inf")).check()  # never take over a claim
    with pytest.raises(FeatstoreError):
        ExtractConfig(claim_timeout=float("nan")).check()
    argv = options.argv(ProbeConfig(ks=(5, 10)))  # a list as the command line takes it
    assert argv[argv.index("--ks") + 1] == "5,10"
