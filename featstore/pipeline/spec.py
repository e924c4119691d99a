"""Pipeline files: one TOML file holds a whole experiment grid (datasets x backbones x stages x
fractions x seeds), validated before anything runs.

The layout (``pipelines/medmnist-quick.toml`` is a complete example)::

    name = "study"
    store = "./featstore-data"            # --store or --set store=... override it
    fractions = [0.01, 0.1, 1.0]          # defaults of every stage's grid
    seeds = 5
    bootstrap = 1000

    [vars]                                # ${data_root} in any string below
    data_root = "/data"                   # --set data_root=... or $FEATSTORE_DATA_ROOT

    [datasets]                            # name = any --data form, or a table
    pcam = "pcam:${data_root}/pcam"
    chest = { data = "${data_root}/nih", task = "multilabel" }

    [backbones]                           # name = spec, or a table with its size/precision
    simclr = "simclr-rn50"
    dino_vits = { spec = "dino-vits16", image_size = 224, precision = "bf16" }

    [extract]   ...                       # the stages: a table each, present = run
    [probe]     probes = ["linear", "knn"]
    [fuse]      backbones = ["simclr", "dino_vits"]
    [finetune]  backbones = ["simclr"], epochs = 10, embed = true
    [slurm]     partition = "gpu"         # --executor slurm only

Values given on the command line (``--set key=value``, ``--store``) and the environment
(``FEATSTORE_<VAR>`` for a variable of ``[vars]``) override the file; values are TOML
(``--set seeds=2``, ``--set 'fractions=[0.1, 1.0]'``) or else plain strings. Relative paths
are relative to the directory ``featstore run`` is started in, as on the command line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featstore import options
from featstore.choices import (
    DTYPES,
    PRECISIONS,
    PROBES,
    TASKS,
)
from featstore.errors import FeatstoreError
from featstore.extract.config import ExtractConfig
from featstore.finetune.config import FinetuneConfig, FinetuneSettings
from featstore.fusion.config import FuseConfig
from featstore.grid import GridSettings, ProbeGrid
from featstore.probe.config import ProbeConfig

STAGES = ("extract", "probe", "fuse", "finetune")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NUMBER = (int, float)


class PipelineError(FeatstoreError):
    """A pipeline file that cannot run: names the file, the key and what is wrong."""


# key -> (types accepted, what the error says is expected); each stage's keys (their values
# checked as GridSettings, ProbeGrid and the stages' configs declare them)
_GRID = {
    "fractions": (list, "a list of fractions in (0, 1]"),
    "seeds": ((int, list), "a number of seeds, or a list of them"),
    "bootstrap": (int, "bootstrap resamples (0: no CI)"),
    "device": (str, "a torch device (cpu, cuda, auto)"),
}
SCHEMA: dict[str, dict[str, tuple[Any, str]]] = {
    "": {
        "name": (str, "a name"), "description": (str, "text"), "store": (str, "a store root"),
        "fractions": _GRID["fractions"], "seeds": _GRID["seeds"],
        "bootstrap": _GRID["bootstrap"],
    },
    "extract": options.toml_types(ExtractConfig),  # its keys, as the config declares them
    "probe": {
        "probes": (list, "a list of " + ", ".join(PROBES)),
        "backbones": (list, "names from [backbones]"),
        **options.toml_types(ProbeConfig), **_GRID,  # the recipe, as the config declares it
    },
    "fuse": {
        "backbones": (list, "2 to 8 names from [backbones]"),
        **options.toml_types(FuseConfig), **_GRID,  # as the config declares them
    },
    "finetune": {
        "backbones": (list, "names from [backbones]"),
        "embed": (bool, "true: extract (and probe) each finetuned model too"),
        **options.toml_types(FinetuneConfig),  # the recipe's keys, as the config declares them
        **options.toml_types(FinetuneSettings), **_GRID,
    },
    "slurm": {
        "partition": (str, "a partition"), "account": (str, "an account"),
        "qos": (str, "a QOS"), "timeout_min": (int, "minutes per job"),
        "gpus_per_node": (int, "GPUs per GPU job (torchrun inside when > 1)"),
        "cpus_per_task": (int, "CPUs per job"), "mem_gb": (int, "memory per job in GB"),
        "folder": (str, "where submitit keeps job logs"),
        "extract_tasks": (int, "array tasks an extract step runs as; they share its "
                               "shards (each may be a node of its own)"),
        "poll_s": (_NUMBER, "seconds between two looks at the queue (default 5)"),
        "signal_delay_s": (int, "a job is told to stop and requeued this long before its "
                                "time limit (default 90)"),
        "additional": (dict, "more sbatch parameters"),
    },
}
DATASET_KEYS = {"data": str, "task": str, "root": str}
BACKBONE_KEYS = {"spec": str, "image_size": int, "precision": str, "dtype": str}


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    data: str
    task: str | None = None
    root: str | None = None


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    spec: str
    image_size: int | None = None
    precision: str = "fp32"
    dtype: str = "float32"


@dataclass
class Pipeline:
    """A validated pipeline: what :func:`featstore.pipeline.plan_pipeline` expands."""

    path: str
    name: str
    store: str
    datasets: list[DatasetEntry]
    backbones: dict[str, BackboneEntry]
    stages: dict[str, dict[str, Any]]  # stage -> its settings, grid defaults filled in
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    extract_all: bool = False  # [extract] in the file: every backbone, probed or not

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.stages.get(name)


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` items as a mapping; values are TOML, else plain strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise PipelineError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key.strip()] = value
    return out


def load_pipeline(path: str | Path, *, sets: dict[str, Any] | None = None,
                  store: str | None = None, environ: dict[str, str] | None = None,
                  check_paths: bool = True, check_devices: bool = True) -> Pipeline:
    """Read, override and validate a pipeline file.

    ``sets``: ``--set`` values (a variable of ``[vars]``, a top-level key, or
    ``stage.key``); ``store``: ``--store``; ``environ``: where ``FEATSTORE_<VAR>`` is looked
    up (default ``os.environ``). With ``check_paths``, a dataset whose path does not exist
    is an error; with ``check_devices``, a stage's device this machine lacks (its steps run
    here; on Slurm only the device's name is checked).

    Raises
    ------
    PipelineError
        A missing or unparsable file; an unknown key, stage, backbone or variable; a bad
        value, checked as the stage's options declare it (a fraction outside (0, 1], an
        unknown probe or attention, a value repeated or out of bounds, a device that is not
        one or not on this machine); a dataset path that does not exist. The message names
        the file and the key.
    """
    p = Path(path)
    where = str(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise PipelineError(f"pipeline {where}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"pipeline {where}: not valid TOML ({e})") from None
    env = os.environ if environ is None else environ

    def fail(msg: str) -> PipelineError:
        return PipelineError(f"pipeline {where}: {msg}")

    variables = doc.pop("vars", {})
    if not isinstance(variables, dict):
        raise fail("[vars] must be a table of name = value")
    variables = {k: str(v) for k, v in variables.items()}
    for k in variables:
        if f"FEATSTORE_{k.upper()}" in env:
            variables[k] = env[f"FEATSTORE_{k.upper()}"]
    for key, value in (sets or {}).items():
        name = key.removeprefix("vars.")  # --set data_root=/x and --set vars.data_root=/x
        if name in variables or key.startswith("vars."):
            variables[name] = str(value)
            continue
        *tables, leaf = key.split(".")
        if tables and tables[0] in STAGES and tables[0] not in doc:
            raise fail(f"--set {key}: the file has no [{tables[0]}] stage (--set changes a "
                       "stage's settings; it does not add the stage)")
        node = doc
        for t in tables:
            node = node.setdefault(t, {})
            if not isinstance(node, dict):
                raise fail(f"--set {key}: {t} is not a table")
        node[leaf] = value
    if store is not None:
        doc["store"] = store
    doc = _substitute(doc, variables, fail)

    for key, value in doc.items():
        if isinstance(value, dict) and key not in ("datasets", "backbones"):
            if key not in SCHEMA:
                raise fail(f"unknown stage or table [{key}] (stages: {', '.join(STAGES)}; "
                           "tables: vars, datasets, backbones, slurm)")
        elif key not in SCHEMA[""] and key not in ("datasets", "backbones"):
            raise fail(f"unknown key {key!r} (expected one of {', '.join(SCHEMA[''])}, or a "
                       "table)")
    _check_keys(doc, "", fail)
    _check_grid({k: doc[k] for k in ("fractions", "seeds", "bootstrap") if k in doc}, "",
                fail)  # even when no stage uses them

    datasets = _datasets(doc.get("datasets"), fail, check_paths)
    backbones = _backbones(doc.get("backbones"), doc.get("extract", {}), fail)
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        if stage not in doc:
            continue
        settings = doc[stage]
        _check_keys(settings, stage, fail)
        if stage != "extract":
            for k in ("fractions", "seeds", "bootstrap"):
                settings.setdefault(k, doc.get(k, _grid_default(k)))
            _check_grid(settings, stage, fail, check_devices)
        stages[stage] = settings
    if not stages:
        raise fail(f"no stages: add at least one of [{'], ['.join(STAGES)}]")
    if any(s in stages for s in ("probe", "fuse")) and "extract" not in stages:
        stages["extract"] = {}  # probes and fusion need their embeddings
    _check_stage_values(stages, backbones, fail, check_devices)
    slurm = doc.get("slurm", {})
    _check_keys(slurm, "slurm", fail)
    return Pipeline(path=where, name=str(doc.get("name", p.stem)),
                    store=str(doc.get("store", "./featstore-data")), datasets=datasets,
                    backbones=backbones, stages=stages, slurm=slurm,
                    description=str(doc.get("description", "")),
                    extract_all="extract" in doc)


def _substitute(value: Any, variables: dict[str, str], fail) -> Any:
    if isinstance(value, str):
        def one(m: re.Match) -> str:
            name = m.group(1)
            if name not in variables:
                raise fail(f"${{{name}}} is not a variable of [vars] (declare it there, then "
                           f"set it with --set {name}=... or $FEATSTORE_{name.upper()})")
            return variables[name]
        return _VAR.sub(one, value)
    if isinstance(value, dict):
        return {k: _substitute(v, variables, fail) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, fail) for v in value]
    return value


# [slurm]'s integer keys and their smallest value (the stages' values: as their configs
# declare them, in their words); list keys and the type of their items
MINIMUM = {"timeout_min": 1, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1,
           "signal_delay_s": 1, "extract_tasks": 1}
ITEMS = {"fractions": _NUMBER, "ks": int, "l2_grid": _NUMBER, "probes": str,
         "backbones": str, "attentions": str}


def _check_keys(table: dict[str, Any], section: str, fail) -> None:
    schema = SCHEMA[section]
    label = f"[{section}] " if section else ""
    for key, value in table.items():
        if section == "" and (isinstance(value, dict) or key in ("datasets", "backbones")):
            continue
        if key not in schema:
            raise fail(f"{label}unknown key {key!r} (expected one of {', '.join(schema)})")
        types, expected = schema[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                    else (types,)):
            raise fail(f"{label}{key} = {value!r}: expected {expected}")
        if not isinstance(value, types):
            raise fail(f"{label}{key} = {value!r}: expected {expected}")
        if isinstance(value, int) and not isinstance(value, bool) and value < MINIMUM.get(
                key, value):
            raise fail(f"{label}{key} = {value}: expected {MINIMUM[key]} or more")
        if isinstance(value, list):
            item = ITEMS.get(key, int if key == "seeds" else None)
            if not value and key in ITEMS:
                raise fail(f"{label}{key} = []: expected at least one value")
            for v in value:
                if item is not None and (isinstance(v, bool) or not isinstance(v, item)):
                    raise fail(f"{label}{key} = {v!r}: expected {expected}")
        if key == "additional" and any(isinstance(v, dict | list) for v in value.values()):
            raise fail(f"{label}additional: expected name = value pairs (sbatch parameters)")


def _grid_default(key: str) -> Any:
    """A grid key's default where neither the stage nor the file's top level sets it."""
    value = options.default(GridSettings, {"bootstrap": "n_bootstrap"}.get(key, key))
    return list(value) if isinstance(value, tuple) else value


def _check_grid(settings: dict[str, Any], stage: str, fail, here: bool = True) -> None:
    """The grid keys of the file's top level or a stage, checked as
    :class:`featstore.grid.GridSettings` declares them; fractions as floats, seeds listed."""
    grid = _check_config(GridSettings, settings, stage, fail, here)
    if "fractions" in settings:
        settings["fractions"] = list(grid.fractions)
    if "seeds" in settings:
        settings["seeds"] = grid.seed_list()


def _datasets(table: Any, fail, check_paths: bool) -> list[DatasetEntry]:
    if not isinstance(table, dict) or not table:
        raise fail("[datasets] is missing: name = \"any --data form\", one per dataset")
    out = []
    for name, entry in table.items():
        if isinstance(entry, str):
            entry = {"data": entry}
        if not isinstance(entry, dict) or "data" not in entry:
            raise fail(f"[datasets] {name}: expected a --data string or a table with data = ")
        for k, v in entry.items():
            if k not in DATASET_KEYS or not isinstance(v, DATASET_KEYS[k]):
                raise fail(f"[datasets] {name}: unknown or bad key {k!r} (expected "
                           f"{', '.join(DATASET_KEYS)}, strings)")
        if entry.get("task") is not None and entry["task"] not in TASKS:
            raise fail(f"[datasets] {name}: task {entry['task']!r}: expected one of "
                       f"{', '.join(TASKS)}")
        if check_paths:
            _check_path(name, entry["data"], fail)
        out.append(DatasetEntry(name=name, **entry))
    return out


def _check_path(name: str, data: str, fail) -> None:
    from featstore.data.readers import LAYOUTS

    kind, sep, rest = data.partition(":")
    path = rest if sep and kind in LAYOUTS else data
    if not Path(path).exists():
        raise fail(f"[datasets] {name}: {path} does not exist"
                   + (" (is a variable such as data_root set? --set data_root=...)"
                      if "/" in path else ""))


def _backbones(table: Any, extract: dict[str, Any], fail) -> dict[str, BackboneEntry]:
    from featstore.errors import BackboneError
    from featstore.models.registry import parse_backbone

    if not isinstance(table, dict) or not table:
        raise fail("[backbones] is missing: name = \"a backbone spec\", one per backbone")
    out = {}
    for name, entry in table.items():
        if isinstance(entry, str):
            entry = {"spec": entry}
        if not isinstance(entry, dict) or "spec" not in entry:
            raise fail(f"[backbones] {name}: expected a spec string or a table with spec = ")
        for k, v in entry.items():
            if k not in BACKBONE_KEYS or isinstance(v, bool) or not isinstance(
                    v, BACKBONE_KEYS[k]):
                raise fail(f"[backbones] {name}: unknown or bad key {k!r} = {v!r} (expected "
                           "spec, image_size, precision, dtype)")
        for key, allowed in (("precision", PRECISIONS), ("dtype", DTYPES)):
            if entry.get(key, allowed[0]) not in allowed:  # [extract]'s: checked as declared
                raise fail(f"[backbones] {name}: {key} {entry[key]!r}: expected one of "
                           f"{', '.join(allowed)}")
        entry = {"precision": extract.get("precision", "fp32"),
                 "dtype": extract.get("dtype", "float32"), **entry}
        if not entry["spec"].startswith("finetuned:"):
            try:
                parse_backbone(entry["spec"], input_size=entry.get("image_size"))
            except BackboneError as e:
                raise fail(f"[backbones] {name}: {e}") from None
        out[name] = BackboneEntry(name=name, **entry)
    return out


def _check_stage_values(stages: dict[str, dict[str, Any]],
                        backbones: dict[str, BackboneEntry], fail, here: bool = True) -> None:
    def names(stage: str, default_all: bool) -> None:
        settings = stages[stage]
        chosen = settings.get("backbones", list(backbones) if default_all else None)
        if chosen is None:
            raise fail(f"[{stage}] backbones: name the backbones (from [backbones])")
        for i, b in enumerate(chosen):
            if b not in backbones:
                raise fail(f"[{stage}] backbones: unknown backbone {b!r} (the file's: "
                           f"{', '.join(backbones)})")
            if b in chosen[:i]:
                raise fail(f"[{stage}] backbones = {b!r}: repeated (expected each backbone "
                           "once)")
        settings["backbones"] = list(chosen)

    def listed(stage: str, cls: type, key: str) -> None:  # the file's list, else the default
        stages[stage].setdefault(key, list(options.default(cls, key)))

    _check_config(ExtractConfig, stages.get("extract", {}), "extract", fail, here)
    if "probe" in stages:
        names("probe", True)
        listed("probe", ProbeGrid, "probes")
        _check_config(ProbeGrid, stages["probe"], "probe", fail, here)
        _check_config(ProbeConfig, stages["probe"], "probe", fail)
    if "fuse" in stages:
        names("fuse", False)
        listed("fuse", FuseConfig, "attentions")
        _check_config(FuseConfig, stages["fuse"], "fuse", fail)
        n = len(stages["fuse"]["backbones"])
        if not 2 <= n <= 8:
            raise fail(f"[fuse] backbones: fusion takes 2 to 8 backbones, got {n}")
    if "finetune" in stages:
        names("finetune", False)
        ft = stages["finetune"]
        if ft.get("init_head") == "probe":
            _check_lp_ft(stages, backbones, fail)
        _check_config(FinetuneConfig, ft, "finetune", fail)
        _check_config(FinetuneSettings, ft, "finetune", fail)


def _check_config(cls: type, settings: dict[str, Any], section: str, fail,
                  here: bool = True) -> Any:
    """A stage's settings (or the top level's, ``section`` empty) against what its config
    declares, the error naming the file's key (``[extract] batch_size = 0: ...``), as the
    command line checks its options; the config's rules between fields (finetuning's
    warmup below its epochs) too. ``here``: a device is one of this machine's. Returns the
    config."""
    try:
        config = options.from_settings(cls, settings)
        options.check(config, FeatstoreError, here)
    except FeatstoreError as e:
        if e.option is None:
            raise
        raise fail(options.file_message(e, section)) from None
    return config


def _check_lp_ft(stages: dict[str, dict[str, Any]], backbones: dict[str, BackboneEntry],
                 fail) -> None:
    """``init_head = "probe"`` (LP-FT) starts each run from the linear probe of the same
    backbone, fraction and seed on fp32 / float32 embeddings: the grid must hold them."""
    ft, probe = stages["finetune"], stages.get("probe")
    for name in ft["backbones"]:
        b = backbones[name]
        if probe is None or name not in probe["backbones"] or "linear" not in probe["probes"]:
            raise fail(f"[finetune] init_head = \"probe\" needs a linear probe of {name} "
                       "([probe] with linear, and the backbone in its backbones)")
        if b.precision != "fp32" or b.dtype != "float32":
            raise fail(f"[finetune] init_head = \"probe\": {name} is embedded at "
                       f"{b.precision} / {b.dtype}; LP-FT starts from probes of fp32 / "
                       "float32 embeddings")
        if not set(ft["fractions"]) <= set(probe["fractions"]) or not set(
                ft["seeds"]) <= set(probe["seeds"]):
            raise fail("[finetune] init_head = \"probe\": its fractions and seeds must be "
                       "among [probe]'s (each run starts from the probe of its fraction and "
                       "seed)")


def finetune_settings(finetune: dict[str, Any]) -> dict[str, Any]:
    """The finetuning recipe's keys of a ``[finetune]`` stage (what a run's config holds)."""
    return {k: finetune[k] for k in options.toml_types(FinetuneConfig) if k in finetune}


def finetune_config(settings: dict[str, Any], task: str, precision: str) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of a stage's settings (its defaults where the file is
    silent), checked."""
    config = options.from_settings(FinetuneConfig, settings, task=task, precision=precision)
    config.check()
    return config
