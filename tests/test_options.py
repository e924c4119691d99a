"""Each stage option is declared once, in its config dataclass: the command line, the pipeline
file's schema, the torchrun argv and the checks are read off it and cannot drift apart."""

from __future__ import annotations

import json
import typing

import click
import pytest
import typer

from featstore import options
from featstore.choices import MAX_SEEDS
from featstore.cli import app
from featstore.errors import FeatstoreError, FinetuneError
from featstore.extract.config import ExtractConfig
from featstore.finetune.config import FinetuneConfig, FinetuneSettings
from featstore.fusion.config import FuseConfig
from featstore.grid import GridSettings, ProbeGrid
from featstore.pipeline.spec import SCHEMA
from featstore.probe.config import ProbeConfig
from tests.conftest import SIZE, TINY, TINY_VIT, cli, make_medmnist


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
    ("probe", ProbeGrid, {}),
    ("fuse", GridSettings, {}),
    ("finetune", GridSettings, {}),
])
def test_every_config_option_is_a_cli_option_with_the_configs_help_and_default(
        command, cls, renamed):
    params = cli_params(command)
    for name, c in options.constraints(cls).items():
        if c.where not in ("both", "cli"):  # the front end fills it in (the manifest's task)
            continue
        p = params[renamed.get(name, c.flag or name)]
        assert p.opts == ["--" + (c.cli or c.flag or name).replace("_", "-")]
        want = options.default(cls, name)
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
    assert options.cli_message(e.value) == "--l2-grid 0.0: expected values > 0"
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


# Every option of every verb, with values the pipeline file refuses: both front ends refuse
# them, each naming the option in its own words (``--dim 0``, ``[fuse] dim = 0``), the
# command line before it reads anything (its --data does not exist).
VERBS = {  # verb (and its pipeline stage) -> the classes that declare its options
    "extract": (ExtractConfig,),
    "probe": (ProbeGrid, ProbeConfig),
    "fuse": (GridSettings, FuseConfig),
    "finetune": (GridSettings, FinetuneConfig, FinetuneSettings),
}
VERB_ARGS = {"extract": ["-b", TINY, "--image-size", str(SIZE)], "probe": [],
             "fuse": ["-b", TINY, "-b", TINY_VIT, "--image-size", str(SIZE)],
             "finetune": ["-b", TINY, "--image-size", str(SIZE)]}
NOT_A_NUMBER = "x"  # of the wrong type: named by each front end, the value as given


def out_of_bounds(c: options.Constraint, kind: type) -> list:
    """Values of ``kind`` that ``c`` refuses: below, above, not a number, not a choice."""
    if c.choices is not None:
        return ["nope"]
    if kind not in (int, float):
        return []
    step = 1 if kind is int else 0.5
    out = []
    if c.low is not None:
        out.append(kind(c.low if c.low_open else c.low - step))
    if c.high is not None:
        out.append(kind(c.high if c.high_open else c.high + step))
    if kind is float:
        out += [float("nan")] + ([float("inf")] if c.finite and c.high is None else [])
    return out + [NOT_A_NUMBER]


def bad_values(cls: type, name: str) -> list[tuple]:
    """(value, the item an error names: None where only the option is named)."""
    c = options.constraints(cls)[name]
    default = options.default(cls, name)
    if c.device:
        return [("tpu", "tpu"), ("cuda:99", "cuda:99")]  # not a device; not on any machine
    if name == "seeds":  # a count (the command line's) or the seeds themselves (a file's)
        return [(0, 0), (-1, -1), (MAX_SEEDS + 1, MAX_SEEDS + 1), ([0, 0], 0), ([2, -1], [2, -1]),
                (NOT_A_NUMBER, None)]
    if isinstance(default, tuple):  # a list option: a bad item, a repeated item
        first = default[0]
        return [([first, v], None if v == NOT_A_NUMBER else v)
                for v in out_of_bounds(c, type(first))] + [([first, first], first)]
    hint = typing.get_type_hints(cls)[name]
    kind = next(t for t in (bool, int, float, str) if t in (typing.get_args(hint) or (hint,)))
    return [(v, None if v == NOT_A_NUMBER else v) for v in out_of_bounds(c, kind)]


CASES = [pytest.param(verb, cls, name, c, value, item, id=f"{verb}-{name}={value!r}")
         for verb, classes in VERBS.items() for cls in classes
         for name, c in options.constraints(cls).items() if c.where in ("both", "cli")
         for value, item in bad_values(cls, name)]


def toml(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def test_every_option_with_a_value_is_walked():
    walked = {(verb, name) for verb, _, name, *_ in (p.values for p in CASES)}
    for verb, classes in VERBS.items():
        for cls in classes:
            for name, c in options.constraints(cls).items():
                kinds = typing.get_args(typing.get_type_hints(cls)[name])
                if c.where != "" and options.default(cls, name) not in (True, False) and (
                        str not in kinds or c.choices or c.device):
                    assert (verb, name) in walked, (verb, name)
    assert len(CASES) > 100


@pytest.mark.parametrize(("verb", "cls", "name", "c", "value", "item"), CASES)
def test_both_front_ends_refuse_a_bad_value_naming_the_option(
        capsys, tmp_path, shared_npz, verb, cls, name, c, value, item):
    def refused(*argv) -> str:
        code, _, err = cli(capsys, *argv)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1, (argv, err)
        assert "internal" not in err and "Traceback" not in err
        return errors[0]

    flag, key = (c.cli or c.flag or name).replace("_", "-"), c.flag or name
    if c.where == "both":  # a pipeline file's [stage] key
        path = tmp_path / "p.toml"
        members = 'backbones = ["a", "b"]\n' if verb in ("fuse", "finetune") else ""
        path.write_text(f'store = "{tmp_path / "s"}"\n[datasets]\nd = "{shared_npz}"\n'
                        f'[backbones]\na = {{ spec = "{TINY}", image_size = {SIZE} }}\n'
                        f'b = {{ spec = "{TINY_VIT}", image_size = {SIZE} }}\n'
                        f"[{verb}]\n{members}{key} = {toml(value)}\n")
        error = refused("run", str(path), "--dry-run")
        named = f"[{verb}] {key} = " + ("" if item is None else repr(item))
        assert named in error, error
    if isinstance(value, list) and name == "seeds":
        return  # the command line counts seeds
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    error = refused(verb, "--data", str(tmp_path / "absent.npz"), "--store",
                    str(tmp_path / "s"), *VERB_ARGS[verb], f"--{flag}", text)
    if item is None or c.choices and isinstance(value, str):  # click's words for a type
        assert f"'--{flag}'" in error or f"--{flag} " in error, error
    else:
        assert f"--{flag} {item!r}:" in error, error


@pytest.fixture(scope="module")
def shared_npz(tmp_path_factory):
    return make_medmnist(tmp_path_factory.mktemp("data") / "m.npz")


def test_a_device_is_checked_against_this_machine_and_by_name_elsewhere(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert options.device_problem("cuda") == "no CUDA GPU on this machine (use cpu, or auto)"
    assert options.device_problem("cuda", here=False) is None  # a Slurm node's, say
    assert options.device_problem("cuda:x", here=False).startswith("not a torch device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert options.device_problem("cuda") is None and options.device_problem("cuda:1") is None
    assert options.device_problem("cuda:2") == "this machine has 2 CUDA GPUs (cuda:0 to cuda:1)"
    with pytest.raises(FeatstoreError) as e:  # the engines' check is the front ends'
        from featstore.runtime import resolve_device

        resolve_device("cuda:2")
    assert options.cli_message(e.value).startswith("--device 'cuda:2': this machine has 2")
