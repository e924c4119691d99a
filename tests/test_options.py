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
from featstore.finetune.config import FinetuneConfig
from featstore.pipeline.spec import SCHEMA
from tests.conftest import SIZE, TINY


def cli_params(command: str) -> dict[str, click.Parameter]:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


@pytest.mark.parametrize("command, cls, renamed", [
    ("extract", ExtractConfig, {"compile": "compile_model"}),
    ("finetune", FinetuneConfig, {}),
])
def test_every_config_option_is_a_cli_option_with_the_configs_help_and_default(
        command, cls, renamed):
    params = cli_params(command)
    for name, c in options.constraints(cls).items():
        if c.where not in ("both", "cli"):  # the front end fills it in (the manifest's task)
            continue
        p = params[renamed.get(name, c.flag or name)]
        assert p.opts == ["--" + (c.flag or name).replace("_", "-")]
        want = options.default(cls, name)
        if name != "n_bootstrap":  # --bootstrap is shared by the probing verbs
            assert p.help == c.help
        assert (p.default.value if hasattr(p.default, "value") else p.default) == want, name


@pytest.mark.parametrize("stage, cls", [("extract", ExtractConfig),
                                        ("finetune", FinetuneConfig)])
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

    params = inspect.signature(extract_embeddings).parameters
    for name, value in ExtractConfig().kwargs().items():
        assert params[name].default == value, name
