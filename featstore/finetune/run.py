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
import time
from dataclasses import asdict
from importlib.metadata import version

import numpy as np
import torch

from featstore._hashing import sha256_bytes
from featstore.choices import ON_ERROR
from featstore.data.fractions import ids_sha256, select_fraction, training_splits
from featstore.data.images import RowDataset
from featstore.data.manifest import Manifest
from featstore.errors import (
    FeatstoreError,
    FinetuneError,
    ImageReadError,
    ManifestError,
    retyped,
)
from featstore.finetune.config import FinetuneConfig, FinetuneRecord, model_key
from featstore.finetune.data import (
    SeededRows,
    check_errors,
    epoch_batches,
    predict,
    unreadable_images,
)
from featstore.finetune.model import (
    Classifier,
    backbone_state_bytes,
    freeze,
    init_from_probe,
    label_array,
    n_outputs,
    param_groups,
)
from featstore.finetune.state import (
    RunState,
    checkpoint_keys,
    epoch_seed,
    rng_states,
    save_object,
    seed_everything,
    set_rng_states,
)
from featstore.models.preprocessing import pixel_stage
from featstore.models.registry import BackboneSpec
from featstore.runtime import autocast, distributed_from_env, resolve_device
from featstore.store.feature_store import FeatureStore
from featstore.store.layout import CHECKPOINTS_GROUP as CHECKPOINTS
from featstore.task import binary_decision, scored_metrics, target_tensor, task_loss


class FinetuneProgress:
    """What the loop reports: one bar per epoch (img/s, train loss) and the val metric."""

    def start(self, epoch: int, epochs: int, total: int) -> None: ...
    def advance(self, n: int, loss: float) -> None: ...
    def end(self, epoch: int, train_loss: float, val_metric: float, img_s: float) -> None: ...


def finetune_run(manifest: Manifest, spec: BackboneSpec, config: FinetuneConfig, *,
                 store: FeatureStore, device: str = "cpu", num_workers: int = 0,
                 recompute: bool = False, progress: FinetuneProgress | None = None,
                 on_error: str = "fail") -> list[FinetuneRecord]:
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
        raise retyped(e, FinetuneError) from None
    task = config.task
    y = label_array(manifest)
    # as the store's index holds them (a dataset without patients: empty strings), so the
    # subsets are the probes' to the row
    groups = (manifest.group if manifest.group is not None
              else np.full(len(manifest), "", dtype=object))
    loaded = build_backbone(spec)
    prep = loaded.preprocessing
    # skip: the rows left out are known before the run's id (which records them)
    bad = unreadable_images(manifest, prep.resize, num_workers) if on_error == "skip" else {}
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
    model = Classifier(loaded.model, loaded.dim, n_outputs(manifest))
    seed_everything(config.seed)  # the head's initialisation
    torch.nn.init.zeros_(model.head.bias)
    torch.nn.init.normal_(model.head.weight, std=0.01)
    freeze(model, config.freeze_until)  # a bad module name fails before the store is touched
    if config.init_head == "probe":  # so does a missing probe (a checkpoint overrides it)
        init_from_probe(model, store, manifest, spec, loaded, config,
                        ids_sha256(manifest.ids[tr]))
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
        return [FinetuneRecord.from_stored(r) for r in saved["records"]] if dist.main else []
    unreadable = bad or unreadable_images(manifest, prep.resize, num_workers)
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
        param_groups(model, config), opt=config.optimizer, lr=config.lr,
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
    loss_fn = task_loss(task, reduction="none")  # per element: the loop weights rows
    ckpt_key, best_key = checkpoint_keys(ds, run_id)
    objects = store.objects
    state = RunState(history=[])
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
        state = RunState(**ck["state"])
        set_rng_states(ck["rng"])
    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    # (a key added here belongs in runkeys.FINETUNE_RECORD_KEYS too)
    record_config = {**asdict(config), "backbone": spec.alias, "model_key": mkey,
                     "layer": spec.layer,
                     "weights_sha256": loaded.weights_sha256, "preprocessing": prep.to_dict(),
                     "device": str(dev), "world_size": dist.world, "val_source": val_source,
                     "versions": {p: version(p) for p in ("featstore", "torch", "timm")}}
    if dist.main:
        ds.finetune_runs.save(run_id, {"status": "running", "config": record_config})
    n_out = n_outputs(manifest)
    train_rows = SeededRows(RowDataset(manifest, train_tf, (3, prep.input_size,
                                                             prep.input_size),
                                        dtype=torch.uint8))
    if num_workers:  # each epoch's workers share one copy of the train rows' arrays
        train_rows.base.share_arrays(tr)
    evaluate = {"manifest": manifest, "transform": eval_tf, "size": prep.input_size,
                "batch_size": config.batch_size * 2, "device": dev,
                "normalize": prep.normalize,
                "precision": config.precision, "task": task, "num_workers": num_workers,
                "dist": dist}
    while state.epoch < config.epochs:
        epoch = state.epoch
        seed = epoch_seed(config, epoch)
        train_rows.seed = seed
        batches = epoch_batches(tr, config.batch_size, seed, dist)
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
            check_errors(errors)
            x = prep.normalize(x.to(dev, non_blocking=True))
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            target = target_tensor(task, y[rows.numpy()], dev)
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
                save_object(objects, best_key, {"model": model.state_dict(), "n_out": n_out,
                                          "epoch": epoch + 1})
            save_object(objects, ckpt_key, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "state": asdict(state), "rng": rng_states()})
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
    # a binary run's labels: the threshold the best weights choose on val
    proba_va = predict(net, rows=va, **evaluate) if task == "binary" else None
    if not dist.main:
        dist.barrier()
        return []
    backbone_bytes = backbone_state_bytes(model)
    best_sha = sha256_bytes(backbone_bytes)
    objects.put(f"{CHECKPOINTS}/{ds.name}/{run_id}/backbone.pt", backbone_bytes)
    hyper = f"lr={config.lr:g}, best epoch {state.best_epoch}/{config.epochs}"
    pred, threshold = binary_decision(task, y[va], proba_va, proba)
    if threshold is not None:
        hyper += f", threshold={threshold:.3g}"
    chosen_on_val = any(np.isfinite(h["val"]) for h in state.history)
    if not chosen_on_val:
        hyper += " (not chosen: val metric undefined)"
    records = [
        FinetuneRecord(dataset=ds.name, backbone=spec.alias, key=mkey, task=task,
                       **scored, fraction=config.fraction, seed=config.seed,
                    hyperparameter=hyper, n_train=len(tr), n_val=len(va), n_test=len(te),
                    val_source=val_source, random_weights=spec.is_random,
                    train_ids_sha256=ids_sha256(manifest.ids[tr]), run_id=run_id,
                    chosen_on_val=chosen_on_val, n_excluded=len(bad),
                    config={**record_config, "recipe": config.recipe(),
                            "best_epoch": state.best_epoch,
                            "history": state.history, "finetuned_sha256": best_sha})
        for scored in scored_metrics(task, y[te], proba, pred, n_bootstrap=config.n_bootstrap,
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


