"""Finetuning: the study's second protocol, the whole network trained on the images.

The same protocol as the probes, run for run: the same manifest rows, the same train subset
for a (fraction, seed) (:func:`featstore.data.fractions.select_fraction`, so the training-id
hash equals the probe's), model selection on val only (the best epoch by the task's primary
metric), the same metrics and bootstrap CI on test (:func:`featstore.task.scored_metrics`).
Runs are persisted in the store's dataset group (``finetune/<run id>``) and listed by
``featstore results`` beside the probes (``probe`` = ``finetune``).

The recipe is timm's: ``create_optimizer_v2`` (AdamW or SGD, weight decay off for norms and
biases, optional layer decay), ``create_scheduler_v2`` (cosine with warmup, stepped per
optimiser update), ``create_transform`` for training augmentation (RandomResizedCrop,
horizontal flip unless ``hflip=False``); evaluation uses the backbone spec's own transform.
After every epoch a checkpoint (model, optimiser, scheduler, scaler, RNG states, epoch, best
so far) is written atomically to ``_checkpoints/<dataset>/<run id>/checkpoint.pt`` in the
store; a killed run resumes from it and ends with the same best epoch and metrics (each
epoch's data order and augmentation are seeded by (seed, epoch), so they do not depend on
where a run stopped). The best weights are kept as ``best.pt`` with their sha256.
"""

from __future__ import annotations

import io
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from featstore._hashing import sha256_bytes, sha256_json
from featstore.choices import ON_ERROR, PRECISIONS
from featstore.data.fractions import ids_sha256, select_fraction, training_splits
from featstore.data.images import RowDataset
from featstore.data.manifest import Manifest
from featstore.errors import (
    FeatstoreError,
    FinetuneError,
    ImageReadError,
    ManifestError,
    ProbeError,
)
from featstore.models.preprocessing import pixel_stage
from featstore.models.registry import BackboneSpec
from featstore.probe import ProbeRecord
from featstore.runkeys import run_id as run_key
from featstore.runtime import Distributed, autocast, distributed_from_env, resolve_device
from featstore.store.dataset import DatasetGroup
from featstore.store.feature_store import FeatureStore
from featstore.store.layout import CHECKPOINTS_GROUP
from featstore.task import check_task, logits_to_proba, scored_metrics

OPTIMIZERS = ("adamw", "sgd")
INIT_HEADS = ("fresh", "probe")
CHECKPOINTS = CHECKPOINTS_GROUP
FINETUNE = "finetune"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines a finetuning run's numbers besides the backbone and data.

    ``lr`` is the peak learning rate (after ``warmup_epochs``), for the effective batch
    ``batch_size * accum_steps``; ``layer_decay`` scales each ViT block's rate by
    ``layer_decay ** depth-from-top`` (timm); ``freeze_until`` freezes every parameter up to
    and including the named module (``layer2``, ``blocks.5``) for partial finetuning;
    ``init_head="probe"`` starts the head from the linear probe cached in the store for the
    same backbone, fraction and seed (LP-FT, Kumar et al., ICLR 2022).
    """

    task: str = "binary"
    fraction: float = 1.0
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    accum_steps: int = 1
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    layer_decay: float | None = None
    freeze_until: str | None = None
    hflip: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    init_head: str = "fresh"
    precision: str = "fp32"
    n_bootstrap: int = 1000

    def check(self) -> None:
        """Raise FinetuneError naming the first bad value."""
        check_task(self.task)
        problems = [
            (not 0 < self.fraction <= 1, f"fraction {self.fraction} is outside (0, 1]"),
            (self.epochs < 1, f"--epochs {self.epochs}: expected at least 1"),
            (self.batch_size < 1, f"--batch-size {self.batch_size}: expected at least 1"),
            (self.accum_steps < 1, f"--accum-steps {self.accum_steps}: expected at least 1"),
            (not 0 < self.lr < float("inf"), f"--lr {self.lr}: expected a positive rate"),
            (not 0 <= self.weight_decay < float("inf"),
             f"--weight-decay {self.weight_decay}: expected a finite value >= 0"),
            (not 0 <= self.warmup_epochs < self.epochs,
             f"--warmup-epochs {self.warmup_epochs}: expected 0 to epochs - 1"),
            (self.layer_decay is not None and not 0 < self.layer_decay <= 1,
             f"--layer-decay {self.layer_decay}: expected a factor in (0, 1]"),
            (self.optimizer not in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r} (expected one of {', '.join(OPTIMIZERS)})"),
            (self.precision not in PRECISIONS, f"unknown precision {self.precision!r}"),
            (self.init_head not in INIT_HEADS,
             f"--init-head {self.init_head!r}: expected one of {', '.join(INIT_HEADS)}"),
            (not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             f"crop scale {self.crop_scale}: expected 0 < min <= max <= 1"),
        ]
        for bad, message in problems:
            if bad:
                raise FinetuneError(message)

    def recipe(self) -> str:
        """What distinguishes this run's training from another's beside fraction and seed
        (runs of one recipe are the seeds of one table row)."""
        skip = ("fraction", "seed", "n_bootstrap")
        return sha256_json({k: v for k, v in asdict(self).items() if k not in skip})[:8]

    def run_id(self, model_key: str, val_source: str, excluded: str | None = None) -> str:
        """Content key of a run; ``excluded``: the hash of the ids of unreadable rows left
        out (runs that left none keep the ids they always had)."""
        payload = {"finetune": asdict(self), "model": model_key, "val": val_source}
        if excluded is not None:
            payload["excluded"] = excluded
        return run_key(payload)


@dataclass
class _State:
    """What a checkpoint holds beyond the torch states."""

    epoch: int = 0  # epochs finished
    best_epoch: int = 0
    best_val: float = -np.inf
    history: list[dict[str, float]] | None = None


class Classifier(torch.nn.Module):
    """The backbone's pooled pre-logits features and a fresh linear head."""

    def __init__(self, backbone: torch.nn.Module, dim: int, n_out: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def model_key(spec: BackboneSpec, weights_sha256: str, preprocessing: dict[str, Any]) -> str:
    """What the starting network is: architecture, the weights' sha256, preprocessing."""
    return sha256_json({"architecture": spec.architecture, "weights_sha256": weights_sha256,
                        "preprocessing": preprocessing, "layer": spec.layer})


def _labels(manifest: Manifest) -> np.ndarray:
    return manifest.labels if manifest.task == "multilabel" else manifest.labels[:, 0]


def _n_out(manifest: Manifest) -> int:
    if manifest.task == "multilabel":
        return manifest.labels.shape[1]
    return 1 if manifest.task == "binary" else manifest.num_classes


def _loss(task: str) -> torch.nn.Module:
    """Per-element loss (reduced by the loop: weighted over rows, see finetune_run)."""
    return (torch.nn.BCEWithLogitsLoss(reduction="none") if task in ("binary", "multilabel")
            else torch.nn.CrossEntropyLoss(reduction="none"))


def _target(task: str, y: np.ndarray) -> torch.Tensor:
    if task == "binary":
        return torch.as_tensor(y, dtype=torch.float32).view(-1, 1)
    if task == "multilabel":
        return torch.as_tensor(y, dtype=torch.float32)
    return torch.as_tensor(y, dtype=torch.long)


def _freeze(model: Classifier, until: str | None) -> None:
    """Freeze the backbone's parameters up to and including those of module ``until``
    (registration order: the stem and the first stages of a CNN, the first blocks of a
    ViT)."""
    if until is None:
        return
    params = list(model.backbone.named_parameters())
    inside = [i for i, (n, _) in enumerate(params) if n.startswith(until + ".")]
    if not inside:
        tops = list(dict.fromkeys(n.split(".")[0] for n, _ in params))
        raise FinetuneError(f"--freeze-until {until!r}: no module with parameters of that "
                            f"name in the backbone (top-level: {', '.join(tops[:12])})")
    for i, (_, p) in enumerate(params):
        p.requires_grad = i > inside[-1]


def _param_groups(model: Classifier, config: FinetuneConfig) -> list[dict[str, Any]]:
    """timm's parameter groups: no weight decay on norms and biases, and with
    ``layer_decay`` each backbone layer's ``lr_scale`` from the backbone's own group matcher
    (the head is the top layer, scale 1); timm's schedulers apply ``lr_scale``."""
    from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay

    head = [p for p in model.head.parameters() if p.requires_grad]
    if config.layer_decay is None:
        return param_groups_weight_decay(model, config.weight_decay)
    if not hasattr(model.backbone, "group_matcher"):
        raise FinetuneError("--layer-decay: this backbone has no layer grouping in timm")
    groups = param_groups_layer_decay(model.backbone, config.weight_decay,
                                      layer_decay=config.layer_decay)
    groups = [g for g in groups if g["params"]]
    if len({g.get("lr_scale", 1.0) for g in groups}) < 2:
        raise FinetuneError("--layer-decay: timm puts every parameter of this backbone in "
                            "one layer, so it would change nothing")
    decay = [p for p in head if p.ndim > 1]
    no_decay = [p for p in head if p.ndim <= 1]
    return groups + [{"params": decay, "weight_decay": config.weight_decay, "lr_scale": 1.0},
                     {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_states() -> dict[str, Any]:
    """The RNG states as tensors and plain values (loadable with ``weights_only=True``: a
    checkpoint read from a shared store never unpickles code)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version_, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version_, list(internal), gauss_next]}


def _set_rng_states(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    kind, key, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version_, internal, gauss_next = rng["python"]
    random.setstate((version_, tuple(internal), gauss_next))


def _epoch_seed(config: FinetuneConfig, epoch: int) -> int:
    return config.seed * 100_003 + epoch


class _SeededRows(torch.utils.data.Dataset):
    """Training rows whose augmentation is seeded by (epoch seed, row): the same crops and
    flips whatever the number of workers or ranks, and wherever a run resumed. An item is
    requested as (row, weight); weight 0 marks a padding row of a rank's share of a batch."""

    def __init__(self, base: RowDataset) -> None:
        self.base = base
        self.seed = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, float]):
        row, weight = item
        gen = torch.default_generator  # the CPU generator only (torch.manual_seed also seeds
        saved_torch, saved_py = gen.get_state(), random.getstate()  # accelerators: slow)
        s = (self.seed * 1_000_003 + row) % 2**62
        gen.manual_seed(s)
        random.seed(s)
        try:
            x, r, error = self.base[row]
        finally:
            gen.set_state(saved_torch)
            random.setstate(saved_py)
        return x, r, error, weight


def _epoch_batches(rows: np.ndarray, batch_size: int, seed: int,
                   dist: Distributed) -> list[tuple[list[tuple[int, float]], int]]:
    """This rank's share of each batch of the epoch (the order drawn from ``seed``), padded
    with weight-0 rows to the same size on every rank, and the batch's real row count."""
    order = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
                 .numpy()]
    out = []
    for b in range(0, len(order), batch_size):
        batch = order[b:b + batch_size].tolist()
        k = -(-len(batch) // dist.world)
        mine = [(r, 1.0) for r in batch[dist.rank * k:(dist.rank + 1) * k]]
        mine += [(batch[0], 0.0)] * (k - len(mine))
        out.append((mine, len(batch)))
    return out


_CHECKED: dict[tuple[str, int | None], dict[int, str]] = {}


def _unreadable(manifest: Manifest, draft: int | None, workers: int) -> dict[int, str]:
    """{row: error} of the images that cannot be read, decoded as training reads them;
    once per dataset in a process (a grid's runs share the check)."""
    key = (manifest.identity, draft)
    if key not in _CHECKED:
        from featstore.data.images import unreadable_rows

        _CHECKED[key] = unreadable_rows(manifest, workers, draft=draft)
    return _CHECKED[key]


def _loader(manifest: Manifest, rows: np.ndarray, transform, size: int, batch_size: int, *,
            num_workers: int, pin: bool):
    """Evaluation rows in order, each once, as uint8 (normalised on the device)."""
    dataset = RowDataset(manifest, transform, (3, size, size), dtype=torch.uint8)
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, rows.tolist()), batch_size=batch_size,
        num_workers=num_workers, pin_memory=pin)


def _check_errors(errors: Sequence[str]) -> None:
    bad = [e for e in errors if e]
    if bad:
        raise ImageReadError(bad[0] + (f" (and {len(bad) - 1} more in this batch)"
                                       if len(bad) > 1 else ""))


def predict(model: torch.nn.Module, manifest: Manifest, rows: np.ndarray, transform,
            size: int, batch_size: int, *, device: torch.device, precision: str, task: str,
            normalize: Callable[[torch.Tensor], torch.Tensor], num_workers: int = 0,
            dist: Distributed | None = None) -> np.ndarray:
    """Probabilities of ``rows``, in order, each row evaluated exactly once: under torchrun
    each rank takes a contiguous part (no padding) and the parts are gathered. ``transform``
    gives uint8 pixels; ``normalize`` finishes them on the device."""
    dist = dist or distributed_from_env(str(device))
    k = -(-len(rows) // dist.world)
    mine = rows[dist.rank * k:(dist.rank + 1) * k]
    model.eval()
    out = []
    loader = _loader(manifest, mine, transform, size, batch_size, num_workers=num_workers,
                     pin=device.type == "cuda")
    with torch.inference_mode(), autocast(device, precision):
        for x, _, errors in loader:
            _check_errors(errors)
            out.append(model(normalize(x.to(device, non_blocking=True))).float())
    width = _width(model)
    z = torch.cat(out) if out else torch.zeros(0, width, device=device)
    return dist.gather(logits_to_proba(task, z))


def _width(model: torch.nn.Module) -> int:
    inner = getattr(model, "module", model)
    return inner.head.out_features


class FinetuneProgress:
    """What the loop reports: one bar per epoch (img/s, train loss) and the val metric."""

    def start(self, epoch: int, epochs: int, total: int) -> None: ...
    def advance(self, n: int, loss: float) -> None: ...
    def end(self, epoch: int, train_loss: float, val_metric: float, img_s: float) -> None: ...


def _checkpoint_keys(ds: DatasetGroup, run_id: str) -> tuple[str, str]:
    base = f"{CHECKPOINTS}/{ds.name}/{run_id}"
    return f"{base}/checkpoint.pt", f"{base}/best.pt"


def _save(objects, key: str, payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    objects.put(key, data)  # whole-object put: atomic (temp + rename, or one S3 PUT)
    return data


def finetune_run(manifest: Manifest, spec: BackboneSpec, config: FinetuneConfig, *,
                 store: FeatureStore, device: str = "cpu", num_workers: int = 0,
                 recompute: bool = False, progress: FinetuneProgress | None = None,
                 on_error: str = "fail") -> list[ProbeRecord]:
    """Finetune ``spec`` on ``manifest`` for one (fraction, seed); records on test.

    Every image the run will read is decoded once before epoch 1: an unreadable one stops
    the run there, named (``on_error="fail"``), or, with ``on_error="skip"``, is left out
    of train, val and test alike (counted in the records' ``n_excluded``; the run's id
    records which rows), as probes leave out the rows skipped at extraction.

    A run persisted under the same id is read back (``recompute`` trains again); a run
    killed midway resumes from its last epoch's checkpoint. Under torchrun
    (``torchrun --nproc-per-node=N -m featstore finetune ...``) the ranks split each batch
    (DistributedDataParallel; the loss is weighted so the update equals one process's on the
    whole batch), evaluate disjoint parts of val and test once each, and rank 0 writes the
    checkpoints and the run; the other ranks return no records.

    Raises
    ------
    FinetuneError
        A bad option, or a train subset with one class.
    ImageReadError
        An image that cannot be read (named).
    """
    from featstore.models.build import build_backbone

    config.check()
    if on_error not in ON_ERROR:
        raise FinetuneError(f"--on-error {on_error!r}: expected fail or skip")
    try:
        dev = resolve_device(device)
    except FeatstoreError as e:
        raise FinetuneError(str(e)) from None
    task = config.task
    y = _labels(manifest)
    # as the store's index holds them (a dataset without patients: empty strings), so the
    # subsets are the probes' to the row
    groups = (manifest.group if manifest.group is not None
              else np.full(len(manifest), "", dtype=object))
    loaded = build_backbone(spec)
    prep = loaded.preprocessing
    # skip: the rows left out are known before the run's id (which records them)
    bad = _unreadable(manifest, prep.resize, num_workers) if on_error == "skip" else {}
    exclude = np.zeros(len(manifest), bool)
    exclude[list(bad)] = True
    try:
        tr, va, te, val_source = training_splits(manifest.split, y, groups,
                                                 exclude if bad else None, name=manifest.name)
    except ManifestError as e:
        raise FinetuneError(str(e)) from None
    tr = select_fraction(tr, manifest.labels, groups, config.fraction, config.seed)
    if task != "multilabel" and len(np.unique(y[tr])) < 2:
        raise FinetuneError(f"{manifest.name}: the train subset (fraction {config.fraction}, "
                            f"seed {config.seed}) holds one class only")
    model = Classifier(loaded.model, loaded.dim, _n_out(manifest))
    _seed_everything(config.seed)  # the head's initialisation
    torch.nn.init.zeros_(model.head.bias)
    torch.nn.init.normal_(model.head.weight, std=0.01)
    _freeze(model, config.freeze_until)  # a bad module name fails before the store is touched
    mkey = model_key(spec, loaded.weights_sha256, prep.to_dict())
    run_id = config.run_id(mkey, val_source,
                           ids_sha256(manifest.ids[np.flatnonzero(exclude)]) if bad else None)
    dist = distributed_from_env(str(dev))
    if dist.active and dev.type == "cuda":  # each rank on its own GPU
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    if dist.main:
        ds = store.dataset(manifest, create=True)
    dist.barrier()
    if not dist.main:
        ds = store.dataset(manifest)
    saved = ds.finetune_runs.get(run_id)
    if saved is not None and saved.get("status") == "complete" and not recompute:
        return [stored_finetune_record(r) for r in saved["records"]] if dist.main else []
    unreadable = bad or _unreadable(manifest, prep.resize, num_workers)
    if unreadable and on_error == "fail":  # before epoch 1, not after training
        raise ImageReadError(next(iter(unreadable.values())) + (
            f" (and {len(unreadable) - 1} more rows; --on-error skip leaves them out)"
            if len(unreadable) > 1 else ""))

    import timm.data
    import timm.optim
    import timm.scheduler

    channels_last = dev.type == "cuda" and not hasattr(loaded.model, "patch_embed")
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not any(p.requires_grad for p in model.parameters()):
        raise FinetuneError(f"--freeze-until {config.freeze_until}: nothing left to train")
    optimizer = timm.optim.create_optimizer_v2(
        _param_groups(model, config), opt=config.optimizer, lr=config.lr,
        weight_decay=config.weight_decay, momentum=0.9)
    train_tf = timm.data.create_transform(
        input_size=(3, prep.input_size, prep.input_size), is_training=True,
        scale=config.crop_scale, hflip=0.5 if config.hflip else 0.0, color_jitter=None,
        interpolation=prep.interpolation, mean=prep.mean, std=prep.std)
    # workers hand over uint8 (augmented by PIL); normalisation runs batched on the device,
    # by the float ops of the per-image transform: the same bits at a quarter of the bytes
    train_tf, eval_tf = pixel_stage(train_tf), prep.pixel_stage()
    pin = dev.type == "cuda"
    steps_per_epoch = -(-len(tr) // config.batch_size)
    updates_per_epoch = -(-steps_per_epoch // config.accum_steps)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs, warmup_lr=config.lr * 1e-3, min_lr=0.0,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    scaler = torch.amp.GradScaler(dev.type, enabled=config.precision == "fp16")
    loss_fn = _loss(task)
    ckpt_key, best_key = _checkpoint_keys(ds, run_id)
    objects = store.objects
    state = _State(history=[])
    objects.remove_stale_temps(ckpt_key)  # a write SIGKILLed mid-way left its temp file
    raw = objects.get(ckpt_key) if not recompute else None
    if raw is not None:  # resume: every state as the last finished epoch left it
        try:
            ck = torch.load(io.BytesIO(raw), map_location=dev, weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
            raise FinetuneError(
                f"run {run_id[:12]}: its checkpoint in {store.root} ({ckpt_key}) is damaged "
                f"({e.__class__.__name__}); run again with --recompute to start it over"
            ) from None
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        state = _State(**ck["state"])
        _set_rng_states(ck["rng"])
    if raw is None and config.init_head == "probe":
        _init_from_probe(model, ds, spec, loaded, config, ids_sha256(manifest.ids[tr]))
    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    record_config = {**asdict(config), "backbone": spec.alias, "model_key": mkey,
                     "layer": spec.layer,
                     "weights_sha256": loaded.weights_sha256, "preprocessing": prep.to_dict(),
                     "device": str(dev), "world_size": dist.world, "val_source": val_source,
                     "versions": {p: version(p) for p in ("featstore", "torch", "timm")}}
    if dist.main:
        ds.finetune_runs.save(run_id, {"status": "running", "config": record_config})
    n_out = _n_out(manifest)
    train_rows = _SeededRows(RowDataset(manifest, train_tf, (3, prep.input_size,
                                                             prep.input_size),
                                        dtype=torch.uint8))
    evaluate = {"manifest": manifest, "transform": eval_tf, "size": prep.input_size,
                "batch_size": config.batch_size * 2, "device": dev,
                "normalize": prep.normalize,
                "precision": config.precision, "task": task, "num_workers": num_workers,
                "dist": dist}
    while state.epoch < config.epochs:
        epoch = state.epoch
        seed = _epoch_seed(config, epoch)
        train_rows.seed = seed
        batches = _epoch_batches(tr, config.batch_size, seed, dist)
        loader = torch.utils.data.DataLoader(
            train_rows, batch_sampler=[b for b, _ in batches], num_workers=num_workers,
            pin_memory=pin)
        net.train()
        if progress and dist.main:
            progress.start(epoch + 1, config.epochs, len(tr))
        t0, seen, total_loss = time.perf_counter(), 0, 0.0
        optimizer.zero_grad(set_to_none=True)
        updates = epoch * updates_per_epoch
        for step, ((x, rows, errors, weight), (_, n_batch)) in enumerate(
                zip(loader, batches, strict=True)):
            _check_errors(errors)
            x = prep.normalize(x.to(dev, non_blocking=True))
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            target = _target(task, y[rows.numpy()]).to(dev)
            w = weight.to(dev, dtype=torch.float32)
            with autocast(dev, config.precision):
                per_row = loss_fn(net(x).float(), target)
            per_row = per_row.reshape(len(w), -1).mean(1)
            real = float((per_row.detach() * w).sum())
            # summed over this rank's real rows, scaled so that DDP's mean over the ranks is
            # the mean over the whole batch (one process: the plain batch mean)
            loss = (per_row * w).sum() * dist.world / n_batch
            group_start = step - step % config.accum_steps
            in_group = min(config.accum_steps, steps_per_epoch - group_start)
            scaler.scale(loss / in_group).backward()  # a short last group is not scaled down
            last = step + 1 == steps_per_epoch
            if (step + 1) % config.accum_steps == 0 or last:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                updates += 1
                scheduler.step_update(num_updates=updates)
            total_loss += real
            seen += int(w.sum())
            if progress and dist.main:
                progress.advance(n_batch, real / max(float(w.sum()), 1.0))
        total_loss, seen_all = dist.total(total_loss, seen)
        img_s = seen_all / max(time.perf_counter() - t0, 1e-9)
        proba = predict(net, rows=va, **evaluate)
        if not np.isfinite(proba).all():
            raise FinetuneError(f"{manifest.name}: training diverged at epoch {epoch + 1} "
                                "(non-finite outputs on val); lower --lr")
        primary = next(m for m in scored_metrics(task, y[va], proba, n_bootstrap=0)
                       if m["primary"])
        val = float(primary["value"]) if np.isfinite(primary["value"]) else -np.inf
        state.history.append({"epoch": epoch + 1, "train_loss": total_loss / max(seen_all, 1),
                              "val": val, "img_s": img_s})
        state.epoch = epoch + 1
        improved = val > state.best_val or state.best_epoch == 0  # (no finite val yet)
        if improved:
            state.best_val, state.best_epoch = val, epoch + 1
        if dist.main:
            if improved:
                _save(objects, best_key, {"model": model.state_dict(), "n_out": n_out,
                                          "epoch": epoch + 1})
            _save(objects, ckpt_key, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "state": asdict(state), "rng": _rng_states()})
        dist.barrier()  # the checkpoint is written before any rank goes on
        if progress and dist.main:
            progress.end(epoch + 1, total_loss / max(seen_all, 1), val, img_s)

    best_raw = objects.get(best_key)
    if best_raw is None:
        raise FinetuneError(f"run {run_id[:12]}: its best weights are missing from "
                            f"{store.root}; run again with --recompute")
    best = torch.load(io.BytesIO(best_raw), map_location=dev, weights_only=True)
    model.load_state_dict(best["model"])
    proba = predict(net, rows=te, **evaluate)
    if not dist.main:
        dist.barrier()
        return []
    backbone_bytes = _backbone_bytes(model)
    best_sha = sha256_bytes(backbone_bytes)
    objects.put(f"{CHECKPOINTS}/{ds.name}/{run_id}/backbone.pt", backbone_bytes)
    hyper = f"lr={config.lr:g}, best epoch {state.best_epoch}/{config.epochs}"
    chosen_on_val = any(np.isfinite(h["val"]) for h in state.history)
    if not chosen_on_val:
        hyper += " (not chosen: val metric undefined)"
    records = [
        ProbeRecord(dataset=ds.name, backbone=spec.alias, key=mkey, task=task,
                    probe=FINETUNE, **scored, fraction=config.fraction, seed=config.seed,
                    hyperparameter=hyper, n_train=len(tr), n_val=len(va), n_test=len(te),
                    val_source=val_source, random_weights=spec.is_random,
                    train_ids_sha256=ids_sha256(manifest.ids[tr]), run_id=run_id,
                    chosen_on_val=chosen_on_val, n_excluded=len(bad),
                    config={**record_config, "recipe": config.recipe(),
                            "best_epoch": state.best_epoch,
                            "history": state.history, "finetuned_sha256": best_sha})
        for scored in scored_metrics(task, y[te], proba, n_bootstrap=config.n_bootstrap,
                                     seed=config.seed, label_names=manifest.label_names)
    ]
    ds.finetune_runs.save(run_id, {
        "status": "complete", "config": record_config, "best_epoch": state.best_epoch,
        "history": state.history, "finetuned_sha256": best_sha,
        "architecture": spec.architecture, "spec": spec.name,
        "records": [r.to_dict() for r in records]})
    objects.delete(ckpt_key)  # the run is finished: its resume state is not needed
    dist.barrier()
    return records


def _init_from_probe(model: Classifier, ds: DatasetGroup, spec: BackboneSpec, loaded: Any,
                     config: FinetuneConfig, train_ids: str) -> None:
    """Set the head to the cached linear probe of the same network (weights, preprocessing,
    layer; float32, fp32 embeddings) trained on the same rows (its training-id hash), with
    its standardisation folded in: ``((f - mean) / scale) W + b = f W' + b'``.

    Raises
    ------
    FinetuneError
        No such probe is cached (the command that makes it is named).
    """
    want = loaded.preprocessing.to_dict()
    for es in ds.embedding_sets():
        prov = es.attrs.get("provenance", {})
        if (prov.get("weights_sha256") != loaded.weights_sha256 or es.dtype != "float32"
                or prov.get("preprocessing") != want or prov.get("layer") != spec.layer
                or prov.get("precision", "fp32") != "fp32"):
            continue
        for run_id, run in es.probe_runs.by_id().items():
            cfg, recs = run.get("config", {}), run.get("records") or []
            if (cfg.get("probe") == "linear" and recs
                    and recs[0].get("train_ids_sha256") == train_ids):
                head = es.probe_head(run_id)
                if head is not None:
                    fold_probe_head(model, head, f"probe run {run_id[:12]}")
                    return
    raise FinetuneError(
        f"--init-head probe: no linear probe of {spec.alias} on these train rows (fraction "
        f"{config.fraction}, seed {config.seed}) is cached in {ds.store.root}; run 'featstore "
        f"extract' and 'featstore probe --fractions {config.fraction:g} --seeds "
        f"{config.seed + 1}' with the same backbone first (runs made before probe heads were "
        "kept need --recompute)")


def fold_probe_head(model: Classifier, head: dict[str, np.ndarray], label: str) -> None:
    """Set ``model``'s head to a linear probe's ``coef`` (D, outputs), ``intercept``,
    ``mean`` and ``scale``: ``((f - mean) / scale) W + b = f (W / scale) + (b - mean/scale W)``.
    A multiclass probe whose train rows lacked the top classes has fewer outputs; those
    classes keep a zero start.

    Raises
    ------
    FinetuneError
        The probe's width does not fit the head (other features or more outputs).
    """
    coef, scale = head["coef"], head["scale"]
    outputs, dim = model.head.out_features, model.head.in_features
    if coef.ndim != 2 or coef.shape[0] != dim or coef.shape[1] > outputs:
        raise FinetuneError(f"--init-head probe: {label} has a {tuple(coef.shape)} head, the "
                            f"network gives {dim} features for {outputs} outputs")
    weight = (coef / scale[:, None]).T
    bias = head["intercept"] - (head["mean"] / scale) @ coef
    n = coef.shape[1]
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[:n] = torch.as_tensor(weight, dtype=torch.float32)
        model.head.bias[:n] = torch.as_tensor(bias, dtype=torch.float32)


def _backbone_bytes(model: Classifier) -> bytes:
    """The finetuned backbone's state dict (no head), as torch.save bytes."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}, buf)
    return buf.getvalue()


def stored_finetune_record(r: dict[str, Any]) -> ProbeRecord:
    nan = float("nan")
    return ProbeRecord(**{**r, "cached": True,
                          **{k: nan if r[k] is None else float(r[k])
                             for k in ("value", "ci_low", "ci_high")}})


def finetune_grid(manifest: Manifest, specs: Sequence[BackboneSpec], config: FinetuneConfig, *,
                  store: FeatureStore, fractions: Sequence[float] = (1.0,),
                  seeds: int | Sequence[int] = 1, device: str = "cpu", num_workers: int = 0,
                  recompute: bool = False, progress: FinetuneProgress | None = None,
                  on_run: Callable[[list[ProbeRecord]], None] | None = None,
                  on_error: str = "fail") -> list[ProbeRecord]:
    """Every (backbone, fraction, seed) of the grid; finished runs are read back."""
    from dataclasses import replace

    seed_list = _seeds(fractions, seeds)
    out: list[ProbeRecord] = []
    for spec in specs:
        for fraction in fractions:
            for seed in seed_list:
                recs = finetune_run(manifest, spec, replace(config, fraction=fraction,
                                                            seed=seed),
                                    store=store, device=device, num_workers=num_workers,
                                    recompute=recompute, progress=progress,
                                    on_error=on_error)
                if on_run:
                    on_run(recs)
                out.extend(recs)
    return out


def finetune_run_ids(spec: BackboneSpec, weights_sha256: str, preprocessing: dict[str, Any],
                     val_source: str, config: FinetuneConfig, *,
                     fractions: Sequence[float] = (1.0,),
                     seeds: int | Sequence[int] = 1) -> list[str]:
    """The ids the runs of a :func:`finetune_grid` of one backbone are persisted under,
    training nothing (a planner asks the store which are there). ``weights_sha256`` and
    ``preprocessing``: the loaded backbone's; ``val_source``: as
    :func:`featstore.data.fractions.val_source` says for the dataset."""
    from dataclasses import replace

    mkey = model_key(spec, weights_sha256, preprocessing)
    return [replace(config, fraction=f, seed=s).run_id(mkey, val_source)
            for f in fractions for s in _seeds(fractions, seeds)]


def _seeds(fractions: Sequence[float], seeds: int | Sequence[int]) -> list[int]:
    """The seeds of a fractions x seeds grid, checked as the probes' grid is."""
    from featstore.probe.run import check_grid

    try:
        return check_grid(fractions, seeds)
    except ProbeError as e:
        raise FinetuneError(str(e)) from None


def stored_finetune_records(ds: DatasetGroup) -> list[ProbeRecord]:
    """Every finished finetuning run's records in a dataset group (no computation)."""
    return [stored_finetune_record(r) for run in ds.finetune_runs.all()
            if run.get("status") == "complete" for r in run.get("records", [])]
