"""A pipeline expanded into steps with dependencies, each asked of the store: done or not.

One extract step per dataset (every backbone in one pass over the images: one decode per
image), one probe step per dataset and backbone (every probe x fraction x seed), one fusion
step per dataset, one finetuning step per dataset and backbone, and, with ``embed``, an
extract and a probe step per finetuned model. A step is *cached* when the store already holds
all of it: every set complete, every run persisted under the id the stage would give it
(the stages' own ``*_run_ids``, so plan and stage can never disagree on what a run is).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featstore import options
from featstore.errors import FeatstoreError, NotExtractedError
from featstore.finetune.config import FinetuneSettings
from featstore.grid import GridSettings
from featstore.pipeline.spec import (
    BackboneEntry,
    DatasetEntry,
    Pipeline,
    finetune_config,
    finetune_settings,
)


@dataclass
class Step:
    """One unit of work: what it is, what it waits for, and whether the store has it."""

    id: str
    stage: str
    dataset: str
    args: dict[str, Any]  # plain data: all :func:`featstore.pipeline.run_step` needs
    deps: list[str] = field(default_factory=list)
    cached: bool = False
    rows: int = 0
    work: str = ""
    gpu: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("args")
        return d


@dataclass
class Plan:
    pipeline: Pipeline
    steps: list[Step]

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)


@dataclass
class _Key:
    """A backbone's embedding key (None where it cannot be computed yet, with why)."""

    digest: str | None
    loaded: Any = None
    note: str = ""


def _dataset_args(entry: DatasetEntry, store: str) -> dict[str, Any]:
    return {"store": store, "data": entry.data, "root": entry.root, "task": entry.task,
            "dataset": entry.name}


def _backbone_args(b: BackboneEntry) -> dict[str, Any]:
    return {"spec": b.spec, "image_size": b.image_size, "precision": b.precision,
            "dtype": b.dtype, "name": b.name}


def plan_pipeline(pipe: Pipeline, *, results_store: str | None = None) -> Plan:
    """Expand ``pipe`` into steps and mark those the store already holds.

    Datasets are read (manifests, content identity) and each backbone is built once to
    compute its key from the weights on disk; a backbone that cannot be built (missing
    weights) gives steps that will fail with that reason, which the plan notes.

    Raises
    ------
    ManifestError
        A dataset cannot be read.
    """
    from featstore.models.registry import backbone_spec
    from featstore.store import FeatureStore
    from featstore.store.backend import default_results_store

    # a reader's runs of a read-only store are in the results store: they count as done
    results_store = results_store or default_results_store()
    fs = FeatureStore(pipe.store, results_store=results_store)
    keys: dict[tuple, _Key] = {}

    def key_of(b: BackboneEntry) -> _Key:
        which = (b.spec, b.image_size, b.precision, b.dtype)
        if which not in keys:
            from featstore.extract import resolve_key

            try:
                spec = backbone_spec(fs, b.spec, input_size=b.image_size)
                loaded, key = resolve_key(spec, b.dtype, b.precision)
                keys[which] = _Key(key.digest, loaded)
            except FeatstoreError as e:
                keys[which] = _Key(None, note=str(e))
        return keys[which]

    steps: list[Step] = []
    for entry in pipe.datasets:
        steps += _dataset_steps(pipe, entry, fs, key_of)
    seen: set[str] = set()
    for s in steps:
        if s.id in seen:
            raise FeatstoreError(f"pipeline {pipe.path}: two steps would be named {s.id!r} "
                                 "(rename a backbone: '<name>-ft' names finetuned models)")
        seen.add(s.id)
    return Plan(pipeline=pipe, steps=steps)



def _dataset_steps(pipe: Pipeline, entry: DatasetEntry, fs, key_of) -> list[Step]:
    """The steps of one dataset of ``pipe``."""
    from featstore.data import load_dataset
    from featstore.data.fractions import val_source

    steps: list[Step] = []
    probe = pipe.stage("probe")
    fuse = pipe.stage("fuse")
    finetune = pipe.stage("finetune")
    extract = pipe.stage("extract") or {}
    manifest = load_dataset(entry.data, root=entry.root, task=entry.task)
    try:
        ds = fs.dataset(manifest)
    except NotExtractedError:
        ds = None
    vsrc = val_source(manifest.split)
    base = {**_dataset_args(entry, pipe.store), "results_store": fs.results_root}
    rows = len(manifest)
    n_train = int((manifest.split == "train").sum())

    by_key = {es.key: es for es in ds.embedding_sets()} if ds is not None else {}
    pixels = pixel_options(extract)

    def embedded(b: BackboneEntry | None):
        """The complete set of ``b`` in this dataset's group made a way the ``[extract]``
        options accept (as the extract step itself would: ``key_pixels``), or None."""
        from featstore.extract import embedding_key
        from featstore.extract.pixels import device_type, key_pixels

        k = key_of(b) if b is not None else None
        if k is None or k.loaded is None:
            return None
        for fields in key_pixels(manifest, k.loaded.preprocessing, pixels["resize"],
                                 device_type(pixels["device"]), pixels["decode"]):
            es = by_key.get(embedding_key(k.loaded, b.dtype, b.precision, *fields).digest)
            if es is not None and es.complete:
                return es
        return None

    used = list(dict.fromkeys([*(probe or {}).get("backbones", []),
                               *(fuse or {}).get("backbones", []),
                               *(pipe.backbones if pipe.extract_all else [])]))
    extract_ids: dict[str, str] = {}
    # one pass per (precision, dtype); a backbone that cannot be built gets a step of its
    # own, so its failure (named) stops only what needs it
    groups: dict[tuple[str, str, str], list[BackboneEntry]] = {}
    for name in used:
        b = pipe.backbones[name]
        groups.setdefault((b.precision, b.dtype, name if key_of(b).note else ""),
                          []).append(b)
    sound = {g[:2] for g in groups if not g[2]}
    for (precision, dtype, alone), members in groups.items():
        sid = f"extract {entry.name}" + (f" [{precision}, {dtype}]" if len(sound) > 1
                                          else "") + (f" {alone}" if alone else "")
        done = [b for b in members if embedded(b) is not None]
        notes = [f"{b.name}: {key_of(b).note}" for b in members if key_of(b).note]
        steps.append(Step(
            id=sid, stage="extract", dataset=entry.name, rows=rows,
            cached=len(done) == len(members), gpu=True,
            work=f"{rows} images x {len(members) - len(done)} of {len(members)} backbones",
            note="; ".join(notes),
            args={**base, **{k: v for k, v in extract.items()}, "stage": "extract",
                  "precision": precision, "dtype": dtype,
                  "backbones": [_backbone_args(b) for b in members]}))
        for b in members:
            extract_ids[b.name] = sid

    def probe_step(b: BackboneEntry, deps: list[str], label: str, known: bool = True) -> Step:
        from featstore.probe import probe_run_ids

        assert probe is not None
        cfg = _probe_config(probe, manifest.task)
        n_runs = len(probe["probes"]) * len(probe["fractions"]) * len(probe["seeds"])
        es = embedded(b if known else None)
        have = 0
        if es is not None:
            # val as the stage makes it: without the rows skipped at extraction
            ids = probe_run_ids(es.key, val_source(manifest.split[~es.missing_mask()]), cfg,
                                probes=probe["probes"],
                                fractions=probe["fractions"], seeds=probe["seeds"])
            have = _n_stored(ids, es.probe_runs.by_id())
        return Step(
            id=f"probe {entry.name} {label}", stage="probe", dataset=entry.name,
            deps=deps, rows=rows, cached=have == n_runs,
            work=f"{n_runs} runs ({'+'.join(probe['probes'])} x "
                 f"{len(probe['fractions'])} fractions x {len(probe['seeds'])} seeds)"
                 + (f", {have} stored" if 0 < have < n_runs else ""),
            args={**base, **_probe_args(probe), "stage": "probe", "pixels": pixels,
                  "backbone": _backbone_args(b)})

    if probe is not None:
        for name in probe["backbones"]:
            b = pipe.backbones[name]
            steps.append(probe_step(b, [extract_ids[name]], name))
    if fuse is not None:
        from featstore.fusion import fusion_run_ids

        members = [pipe.backbones[n] for n in fuse["backbones"]]
        n_methods = len(fuse["attentions"]) + (
            1 + len(members) if fuse.get("baselines", True) else 0)
        n_runs = n_methods * len(fuse["fractions"]) * len(fuse["seeds"])
        have = 0
        if ds is not None and all(embedded(b) is not None for b in members):
            missing = np.zeros(len(manifest), bool)
            for b in members:  # a row is fused only where every set has it
                missing |= embedded(b).missing_mask()
            ids = fusion_run_ids([embedded(b).key for b in members],
                                 val_source(manifest.split[~missing]),
                                 task=manifest.task, **_fuse_grid(fuse))
            have = _n_stored(ids, ds.fusion_runs.by_id())
        steps.append(Step(
            id=f"fuse {entry.name}", stage="fuse", dataset=entry.name, rows=rows,
            deps=list(dict.fromkeys(extract_ids[n] for n in fuse["backbones"])),
            cached=have == n_runs,
            work=f"{n_runs} runs ({len(members)} backbones: "
                 f"{'+'.join(fuse['attentions'])} DVME"
                 + (", concat, singles" if fuse.get("baselines", True) else "")
                 + f" x {len(fuse['fractions'])} fractions x {len(fuse['seeds'])} seeds)"
                 + (f", {have} stored" if 0 < have < n_runs else ""),
            args={**base, "stage": "fuse", **_fuse_grid(fuse), "pixels": pixels,
                  "device": fuse.get("device", options.default(GridSettings, "device")),
                  "backbones": [_backbone_args(b) for b in members]}))
    if finetune is not None:
        from featstore.finetune import finetune_run_ids

        for name in finetune["backbones"]:
            b = pipe.backbones[name]
            k = key_of(b)
            cfg = finetune_config(finetune, manifest.task, b.precision)
            sid = f"finetune {entry.name} {name}"
            ids: list[str] = []
            stored = ds.finetune_runs.by_id() if ds is not None else {}
            if k.loaded is not None:
                ids = finetune_run_ids(k.loaded.spec, k.loaded.weights_sha256,
                                       k.loaded.preprocessing.to_dict(), vsrc, cfg,
                                       fractions=finetune["fractions"],
                                       seeds=finetune["seeds"])
            done = [i for i in ids if stored.get(i, {}).get("status") == "complete"]
            n_runs = len(finetune["fractions"]) * len(finetune["seeds"])
            deps = [f"probe {entry.name} {name}"] if cfg.init_head == "probe" else []
            images = n_train * cfg.epochs * sum(finetune["fractions"]) * len(finetune["seeds"])
            steps.append(Step(
                id=sid, stage="finetune", dataset=entry.name, rows=rows, deps=deps,
                cached=bool(ids) and len(done) == n_runs, gpu=True, note=k.note,
                work=f"{n_runs} runs x {cfg.epochs} epochs, ~"
                     f"{_human(images)} train images"
                     + (f", {len(done)} stored" if 0 < len(done) < n_runs else ""),
                args={**base, "stage": "finetune", "backbone": _backbone_args(b),
                      "config": finetune_settings(finetune),
                      # the rows extract skipped are left out here too (and named otherwise)
                      **asdict(options.from_settings(FinetuneSettings, {
                          "on_error": extract.get("on_error"), **finetune})),
                      "device": finetune.get("device", options.default(GridSettings, "device")),
                      "fractions": finetune["fractions"], "seeds": finetune["seeds"]}))
            if not finetune.get("embed", False):
                continue
            for i, f in enumerate(finetune["fractions"]):
                for j, s in enumerate(finetune["seeds"]):
                    rid = ids[i * len(finetune["seeds"]) + j] if ids else None
                    label = (f"{name}-ft" + (f" f{f:g}" if len(finetune["fractions"]) > 1
                                              else "")
                             + (f" s{s}" if len(finetune["seeds"]) > 1 else ""))
                    group = ds.name if ds is not None else manifest.group_name
                    fb = BackboneEntry(name=label,
                                       spec=f"finetuned:{group}/{rid}" if rid else "",
                                       image_size=None, precision=b.precision,
                                       dtype=b.dtype)
                    known = bool(rid) and rid in done
                    xid = f"extract {entry.name} {label}"
                    steps.append(Step(
                        id=xid, stage="extract", dataset=entry.name, rows=rows,
                        deps=[sid], cached=embedded(fb if known else None) is not None,
                        gpu=True,
                        work=f"{rows} images x 1 backbone (finetuned)",
                        args={**base, **extract, "stage": "extract",
                              "precision": b.precision, "dtype": b.dtype,
                              "backbones": [_backbone_args(fb)]}))
                    if probe is not None:
                        steps.append(probe_step(fb, [xid], label, known))
    return steps

def pixel_options(extract: dict[str, Any]) -> dict[str, str]:
    """The ``[extract]`` options that decide which sets of a backbone count as its own:
    how pixels are resized and decoded, and on which device."""
    from featstore.extract.config import ExtractConfig

    return {k: extract.get(k, options.default(ExtractConfig, k))
            for k in ("resize", "decode", "device")}


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"


def _probe_args(probe: dict[str, Any]) -> dict[str, Any]:
    keep = ("probes", "fractions", "seeds", "bootstrap", "ks", "l2_grid", "ordinal_decode",
            "device")
    return {k: probe[k] for k in keep if k in probe}


def _probe_config(probe: dict[str, Any], task: str):
    """The :class:`ProbeConfig` of a ``[probe]`` stage (its defaults where it is silent)."""
    from featstore.probe.config import ProbeConfig

    return options.from_settings(ProbeConfig, probe, task=task)


def _n_stored(ids: list[tuple[str, ...]], stored: dict[str, Any]) -> int:
    """How many runs are stored: each under any of the ids it is found under."""
    return sum(any(i in stored for i in alts) for alts in ids)


def _fuse_grid(fuse: dict[str, Any]) -> dict[str, Any]:
    """``fuse_grid`` keywords of a ``[fuse]`` stage (its config's defaults where silent)."""
    from featstore.fusion.config import FuseConfig

    return {"fractions": fuse["fractions"], "seeds": fuse["seeds"],
            **options.from_settings(FuseConfig, fuse).kwargs()}
