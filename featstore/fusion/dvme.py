"""DVME: Dynamic Visual Meta-Embedding, the study's fusion head over several backbones.

After Kiela et al. (2018), "Dynamic Meta-Embeddings", as adapted by Truong et al. (2021):
each backbone k's (standardised) embedding e_k is projected to a common dimension d,
w_k = P_k e_k + b_k; a scorer shared across backbones gives a logit s_k per row; the weights
alpha are softmax_k(s_k) (default), sigmoid(s_k) (gating) or uniform; the fused vector
z = sum_k alpha_k w_k goes through dropout and a linear classifier.

The logit (head version 2) is s_k = a . LN_k(w_k) + c, divided by sqrt(d) for softmax;
LN_k is backbone k's own LayerNorm (learned gain and offset) and the scorer (a, c) starts
at zero. Version 1 scored the raw projections, s_k = a . w_k + c, with a random scorer, and
its attention did worse than the plain mean (issue 12). Measured on balanced PneumoniaMNIST
with three random-weight backbones at 64 px and on generated data (``benchmarks/fuse.py``):

- The random scorer gave each row its own weights from the first step, and the logits'
  spread over rows grew within a few steps (sd 0.3 at the start, 2.0 after five steps for
  the 1024-d backbone, 0.45 for the 64-d one: with Adam, a . w_k moves faster the wider
  backbone k). That gating fits noise: val AUC peaked early, early stopping kept an
  underfitted head (10% of the training rows: test AUC 0.895 softmax, 0.902 sigmoid,
  0.915 uniform). Where the mean is right, replacing each head's per-row weights by their
  average raised test AUC from 0.917 to 0.929 (one signal in every backbone) and from
  0.935 to 0.956 (one pure-noise backbone).
- The score grew with the size of a projection, so a large (or, on that row, loud) one
  won the row's attention for its size alone.

So the zero start makes attention begin as the plain mean and leave it only as far as the
data pays; LN_k scores each projection's direction, not its size (its offset is a learned
per-backbone prior, the part b_k plays in DME's score): it is what lets attention route
each class to the backbone that separates it (generated, softmax accuracy 0.939 without
it, 0.970 with it, uniform 0.934). A softmax logit divided by sqrt(d) is |a| times a cosine,
bounded whatever d and the projections' norms, as in scaled dot-product attention (without
it 0.918 where uniform gives 0.943); sigmoid gates are not divided: they can all open at
once (the plain sum), so per-row spread costs them little, and divided they learn that
routing too slowly (accuracy 0.66 against 0.94 on 1,200 training rows). Heads saved before
version 2 load as version 1 and predict as they did.

Head version 3 (issue 21). A head trained from a random start fits what is loud on train:
with one informative 32-d backbone beside two 5x louder noise backbones (128-d, 96-d), head
v2 scored test AUC 0.93 (1,500 rows) and 0.78 (400 rows) where the informative backbone
alone scored 0.97 and 0.98 and the concat probe 0.97 and 0.96; its projections overfit the
noise, and its attention, though pointed at the right backbone, could not undo that. From
the concat probe's optimum, training every parameter never improved val (the next steps
overfit again). So ``fit`` trains two candidates and keeps the one better on val:

- the v2 head from its random start (it learns projections and attention together, which
  is what routes classes to the backbone that separates them: accuracy 0.97 against the
  concat probe's 0.74 on generated per-class data);
- a head that starts as the concat probe (each projection's first outputs are its
  backbone's block of the probe's weights, L2 chosen on val; the classifier reads them
  off; attention uniform) and then trains the attention alone (scorer and per-backbone
  LayerNorm, so the scorer sees each backbone's class evidence), early-stopped on val from
  that start, so it never ends below the concat probe on val. On the known-answer case it
  moves 0.72-0.77 of the attention onto the informative backbone and scores 0.97.

Head version 4 (issue 21, round two). Measured on three random-weight backbones at 64 px
(``benchmarks/fuse.py``), the v3 head's attention still pointed the wrong way: on balanced
PneumoniaMNIST at full labels its sigmoid gates were 0.51 / 0.52 / 0.46 for resnet18 /
test_vit / mobilenet, largest on test_vit, the weakest backbone alone (test AUC 0.848
against 0.894 and 0.929), and on BreastMNIST at 10% 0.60 / 0.62 / 0.59. The cause is in
the concat start: each projection is its backbone's block of the probe's weights, so the
size of w_k is how much evidence the probe takes from backbone k, and it differs by
backbone (the probe shrinks the weak one's block). Uniform attention over projections of
different sizes is not equal weight, and the attention the scorer then learns says "scale
this block up or down", not "trust this backbone": a small block (the weak backbone's) needs
a larger weight for any visible effect, and sigmoid gates, which can all open at once,
drift up together (0.98 each on one BreastMNIST seed, a sharper logit that val AUC cannot
see), the largest among them by chance. The LayerNorm the scorer reads makes it worse: a
projection with one non-zero coordinate (a binary probe's vote) normalises to its sign.

So the concat start now writes each backbone's share of the evidence into the attention,
not into the projections: alpha_k = s_k / sum_j s_j, with s_k the root mean square of the
logit backbone k's block gives on the training rows (floored at 2% / k), and w_k = block_k
/ alpha_k, so that every projection carries evidence of one size and the fused vector is
still the probe's logit exactly. The shares enter as a per-backbone prior the scorer can
move from: one coordinate of each projection (zero at the start) has LayerNorm gain 0, so
it reads its offset, log(alpha_k) (softmax) or logit(alpha_k) (sigmoid), and the scorer
reads that coordinate with weight sqrt(d) (undoing the softmax's division) or 1. Training
the attention from there, early-stopped on val, moves it only as far as val pays. The
largest attention then goes to the backbone the concat probe relies on most: mobilenet in
both cases above (pneumonia, full labels: softmax 0.35 / 0.26 / 0.39, sigmoid 0.46 / 0.26 /
0.61, test AUC 0.9365 softmax, 0.9359 sigmoid against uniform 0.9336 and concat 0.9359).

Head version 5 (issue 21, round three). Two ways v4 still went wrong, both in the random-start
candidate. (1) On a small val, that candidate could win by luck: v4 kept whichever candidate
scored higher on val, by any amount, and on 30 val rows (generated, two complementary
backbones) it took a random start that lost 0.17 test AUC to the concat probe; on
BreastMNIST at 10% labels (78 val rows) the same choice on one seed cost v4's sigmoid 0.0076
against uniform over 3 seeds. The random start now has to beat the concat start by more than
the paired bootstrap sd of the two val scores (the same resampled rows score both), so a
val too small to tell keeps the concat start (BreastMNIST 10%: sigmoid 0.7023, uniform
0.7029, concat probe 0.7078). (2) Its attention began uniform and learned only routing: where
backbones are informative for different classes, it routed correctly (0.73-0.76 to each
class's backbone) but the mean over rows was a tie that fell to the weaker backbone (0.49 /
0.51 for A / B, which score 0.780 / 0.739 alone). It now starts at the concat probe's
evidence shares too, and a KL term (weight ``PRIOR_WEIGHT``) holds its batch-mean attention
near them, so it routes per row around the backbone the probe relies on most: 0.51 / 0.49,
same routing, test AUC 0.9967 against 0.9971. (Since v5 the concat candidate trains first,
so a v3 or v4 fit made today, as ``benchmarks/fuse.py`` can, draws other shuffles and
dropout masks than it did: close to those heads, not bit for bit.)

Head version 6 (speed, same method). v5's concat start fitted its probe on the head's
standardised copies: the concat baseline's probe up to rounding, fitted again by every head.
v6 starts from the baseline's probe itself, written exactly onto the standardised copies
(x = s * x~ + m), so a run fits it once (``fit(..., concat_probe=...)``; the head is the same
bit for bit either way). Same start up to rounding, not bit for bit: a new version.

The run id carries the version, so runs of earlier heads are recomputed, never read back
as current; their saved heads still load. Once the same run is made by the current head,
the earlier head's run is no longer listed (``stored_fusion_records``).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from featstore import progress
from featstore.choices import ATTENTIONS, HEAD_VERSION  # the versions: the docstring above
from featstore.errors import FusionError, ProbeError, as_fusion_error
from featstore.fusion.rows import Rows as _Rows
from featstore.fusion.rows import compact as _compact
from featstore.fusion.rows import standardiser as _standardiser
from featstore.metrics import paired_bootstrap_sd, primary_score
from featstore.rows import ColumnBlocks
from featstore.task import (
    check_task,
    logits_to_proba,
    make_targets,
    proba_to_labels,
)

if TYPE_CHECKING:
    from featstore.probe.linear import SweepResult

ATTENTION_LR = 1e-2  # the attention-only stage from the concat start (few parameters)
PRIOR_WEIGHT = 0.3  # the random start (v5): KL(prior || batch-mean attention) in its loss


class _DVMEModule(nn.Module):
    def __init__(self, dims: Sequence[int], dim: int, n_out: int, attention: str,
                 dropout: float, version: int = HEAD_VERSION) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in dims)
        self.scorer = nn.Linear(dim, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_out)
        self.attention = attention
        self.version = version
        if version >= 2:
            self.norm = nn.ModuleList(nn.LayerNorm(dim) for _ in dims)
            nn.init.zeros_(self.scorer.weight)
            nn.init.zeros_(self.scorer.bias)

    def logits(self, w: torch.Tensor) -> torch.Tensor:
        """Attention logits (B, K) of projected embeddings (B, K, dim)."""
        if self.version == 1:
            return self.scorer(w).squeeze(2)
        u = torch.stack([n(w[:, k]) for k, n in enumerate(self.norm)], dim=1)
        s = self.scorer(u).squeeze(2)
        return s / math.sqrt(w.shape[2]) if self.attention == "softmax" else s

    def project(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Projected embeddings (B, K, dim)."""
        return torch.stack([p(x) for p, x in zip(self.proj, xs, strict=True)], dim=1)

    def attend(self, w: torch.Tensor) -> torch.Tensor:
        """Attention weights (B, K) of projected embeddings ``w``."""
        if self.attention == "uniform":
            return torch.full(w.shape[:2], 1.0 / w.shape[1], device=w.device)
        s = self.logits(w)
        return torch.softmax(s, dim=1) if self.attention == "softmax" else torch.sigmoid(s)

    def weights(self, xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected embeddings (B, K, dim) and attention weights (B, K)."""
        w = self.project(xs)
        return w, self.attend(w)

    def forward_projected(self, w: torch.Tensor) -> torch.Tensor:
        """Output logits (B, n_out) of projected embeddings ``w``."""
        return self.head(self.drop((self.attend(w).unsqueeze(2) * w).sum(1)))

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.forward_with_attention(xs)[0]

    def forward_with_attention(self, xs: Sequence[torch.Tensor],
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output logits (B, n_out) and attention weights (B, K)."""
        w, alpha = self.weights(xs)
        return self.head(self.drop((alpha.unsqueeze(2) * w).sum(1))), alpha


def _evidence_shares(Xt: _Rows, blocks: Sequence[np.ndarray],
                     floor: float = 0.02) -> np.ndarray:
    """Each backbone's share of a linear probe's evidence on the concatenation: the size
    (root mean square over rows and outputs) of the logit its block of the weights gives on
    the training rows, over the sum of them (floored at ``floor`` / k, then summing to 1)."""
    squares = np.zeros(len(blocks))
    for _, Xb in Xt.blocks():
        squares += [np.sum((X.cpu().numpy() @ B) ** 2) for X, B in zip(Xb, blocks, strict=True)]
    size = np.sqrt(squares / (len(Xt) * blocks[0].shape[1]))
    k = len(size)
    share = size / size.sum() if size.sum() > 0 and np.isfinite(size).all() else np.ones(k)
    share = np.maximum(share / share.sum(), floor / k)
    return share / share.sum()


def _val_target(task: str, y_val: np.ndarray, n_out: int, device: str) -> torch.Tensor | None:
    """Val labels as targets, or None where a head of ``n_out`` outputs has no loss on them
    (one class; a class train lacks): val then chooses by its metric alone, as the probe."""
    try:
        targets = make_targets(task, y_val, device)
    except ProbeError:
        return None
    return targets.target if targets.n_out <= n_out else None


class DVME(ClassifierMixin, BaseEstimator):
    """The DVME fusion head as a scikit-learn estimator: ``fit(Xs, y, Xs_val, y_val)``,
    ``predict_proba(Xs)``, ``predict(Xs)``.

    Parameters
    ----------
    task : str
        ``binary``, ``multiclass``, ``ordinal`` or ``multilabel`` (losses as the linear probe:
        logistic, softmax cross-entropy, per-label logistic).
    dim : int
        Common projection dimension.
    attention : str
        ``softmax`` (default), ``sigmoid`` (gating) or ``uniform`` (plain mean).
    dropout, lr, weight_decay : float
        Dropout on the fused vector; AdamW learning rate and weight decay.
    batch_size, max_epochs, patience : int
        Mini-batch size; epochs at most; epochs without val improvement before stopping
        (the best val state is restored).
    seed : int
        Seeds initialisation, dropout and shuffling: same seed, same head.

    Raises
    ------
    FusionError
        (a ``ValueError``) for invalid arguments or data, from ``fit`` and ``predict_proba``.
    """

    # the head architecture fit builds (module docstring); a loaded head keeps its file's
    _head_version = HEAD_VERSION

    def __init__(self, task: str = "binary", *, dim: int = 256, attention: str = "softmax",
                 dropout: float = 0.1, lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 512, max_epochs: int = 100, patience: int = 8,
                 seed: int = 0, device: str = "cpu") -> None:
        self.task = task
        self.dim = dim
        self.attention = attention
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.seed = seed
        self.device = device

    def _config(self) -> dict:
        """The parameters that define the head (the device is where it runs, not what it is)."""
        return {k: v for k, v in self.get_params().items() if k != "device"}

    def _rows(self, Xs: Sequence[np.ndarray]) -> _Rows:
        """Rows to score, standardised by the train statistics a block at a time."""
        if len(Xs) != len(self.means_):
            raise FusionError(f"DVME was fitted on {len(self.means_)} backbones, got {len(Xs)}")
        if len({len(X) for X in Xs}) != 1:
            raise FusionError(f"backbone row counts {[len(X) for X in Xs]} do not align")
        parts = []
        for k, (X, m) in enumerate(zip(Xs, self.means_, strict=True)):
            Xc = _compact(X, self.device)
            if Xc.shape[1] != len(m):
                raise FusionError(f"backbone {k}: {Xc.shape[1]} dims, the head expects {len(m)}")
            parts.append(Xc)
        return _Rows(parts, self.means_, self.scales_)

    def _check_params(self) -> None:
        with as_fusion_error():
            check_task(self.task)
        if self.attention not in ATTENTIONS:
            raise FusionError(f"unknown attention {self.attention!r} "
                              f"(expected one of {', '.join(ATTENTIONS)})")
        for name in ("dim", "batch_size", "max_epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise FusionError(f"{name}={getattr(self, name)!r}: expected at least 1")
        if not 0 <= self.dropout < 1:
            raise FusionError(f"dropout={self.dropout!r}: expected a value in [0, 1)")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise FusionError(f"lr={self.lr!r}, weight_decay={self.weight_decay!r}: expected "
                              "lr > 0 and weight_decay >= 0")

    def _build(self, dims: Sequence[int], n_out: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.module_ = _DVMEModule(dims, self.dim, n_out, self.attention, self.dropout,
                                       self._head_version).to(self.device)

    def fit(self, Xs: Sequence[np.ndarray], y: np.ndarray, Xs_val: Sequence[np.ndarray],
            y_val: np.ndarray, *, concat_probe: SweepResult | None = None) -> DVME:
        """Train on ``Xs`` (one (N, d_k) array per backbone) and ``y``; early-stop on val.

        The head starts from ``fit_with_validation`` on the concatenated ``Xs`` and
        ``Xs_val``; a caller holding that probe for these arrays (the concat baseline,
        another head's ``concat_probe_``) passes it as ``concat_probe``: same head, bit for
        bit, one fit fewer (heads before version 6 fit their own).

        Raises
        ------
        FusionError
            Unknown task/attention, fewer than 2 backbones, rows that do not align, NaN/inf,
            a single class in ``y``, a ``concat_probe`` of another task or width.
        """
        self._check_params()
        if len(Xs) < 2:
            raise FusionError("DVME fuses at least two backbones")
        rows = {len(X) for X in Xs}
        if len(rows) != 1 or len(y) not in rows:
            raise FusionError(f"backbone row counts {sorted(len(X) for X in Xs)} and "
                              f"{len(y)} labels do not align")
        parts = [_compact(X, self.device) for X in Xs]
        with as_fusion_error():
            targets = make_targets(self.task, y, self.device)
        scalers = [_standardiser(X) for X in parts]
        self.means_ = [s.mean for s in scalers]
        self.scales_ = [s.scale for s in scalers]
        Xt = _Rows(parts, self.means_, self.scales_)  # standardised as they are used
        Xv = self._rows(Xs_val)
        target, n_out, loss_fn = targets.target, targets.n_out, targets.loss()
        self.classes_ = targets.classes
        self.n_out_ = n_out
        dims = [X.shape[1] for X in parts]
        if self._head_version >= 3 and self.dim < n_out:
            raise FusionError(f"dim={self.dim}: a DVME head needs at least its {n_out} "
                              "outputs")
        self.concat_probe_ = None
        if self._head_version >= 6:
            self.concat_probe_ = self._concat_probe(Xs, y, Xs_val, y_val, concat_probe, n_out)
        self._build(dims, n_out)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # dropout masks
            if self._head_version >= 3:
                best, history = self._fit_two_starts(dims, n_out, Xt, y, target, loss_fn, Xv,
                                                     y_val, gen)
            else:
                best, history = self._train(list(self.module_.parameters()), self.lr, Xt,
                                            target, loss_fn, Xv, y_val, gen, -np.inf)
                self.start_ = "random"
        self.history_ = history
        self.best_val_ = float(best)
        self.n_epochs_ = len(self.history_)
        return self

    def _concat_probe(self, Xs: Sequence[np.ndarray], y: np.ndarray,
                      Xs_val: Sequence[np.ndarray], y_val: np.ndarray,
                      given: SweepResult | None, n_out: int) -> SweepResult:
        """The linear probe on the concatenated embeddings as given (head version 6 on):
        ``given``, checked against this head, or fitted here."""
        width = sum(np.shape(X)[1] for X in Xs)
        if given is not None:
            probe = given.probe
            (d, k) = np.shape(probe.coef_)
            if probe.task != self.task or (d, k) != (width, n_out):
                raise FusionError(f"concat_probe: a {probe.task} probe of {d} features and {k} "
                                  f"outputs; this {self.task} head fuses {width} features "
                                  f"into {n_out} outputs")
            m, s = self._flat_standardiser()
            if not np.allclose(probe.mean_, m, rtol=0, atol=1e-4 * s.max()):
                raise FusionError("concat_probe: fitted on other rows than these (its feature "
                                  "means differ from theirs)")
            return given
        from featstore.probe.linear import fit_with_validation

        return fit_with_validation(ColumnBlocks(Xs), np.asarray(y), ColumnBlocks(Xs_val),
                                   np.asarray(y_val), task=self.task, device=self.device)

    def _flat_standardiser(self) -> tuple[np.ndarray, np.ndarray]:  # float64, concatenated
        return tuple(np.concatenate([t.cpu().numpy() for t in ts]).astype(np.float64)
                     for ts in (self.means_, self.scales_))

    def _fit_two_starts(self, dims: Sequence[int], n_out: int, Xt: _Rows,
                        y: np.ndarray, target: torch.Tensor, loss_fn: nn.Module,
                        Xv: _Rows, y_val: np.ndarray, gen: torch.Generator,
                        ) -> tuple[float, list[float]]:
        """Train the head from the concat probe (attention alone) and from a random start
        (every parameter); keep the concat start unless the random start beats it on val by
        more than the paired bootstrap sd of the two val scores (head version 5; before, by
        any amount). (best val score, history)."""
        self._build(dims, n_out)
        start = self._start_from_concat(Xt, y, Xv, y_val)
        history: list[float] = []
        if self.attention != "uniform":
            attention = [p for n, p in self.module_.named_parameters()
                         if n.startswith(("scorer", "norm"))]
            # at least 8 steps an epoch: a few hundred rows are one batch otherwise
            steps = max(1, min(self.batch_size, -(-len(target) // 8)))
            start, history = self._train(attention, ATTENTION_LR, Xt, target, loss_fn, Xv,
                                         y_val, gen, start, batch_size=steps,
                                         val_target=_val_target(self.task, y_val, n_out,
                                                                self.device))
        concat = (start, history, copy.deepcopy(self.module_), self._proba(Xv))
        self._build(dims, n_out)
        if self._head_version >= 5:  # the random start's attention begins at the same prior
            self._set_prior(np.asarray(self.start_shares_))
        prior = None
        if self._head_version >= 5 and self.attention != "uniform":
            prior = torch.as_tensor(self.start_shares_, dtype=torch.float32, device=self.device)
        best, history = self._train(list(self.module_.parameters()), self.lr, Xt, target,
                                    loss_fn, Xv, y_val, gen, -np.inf, prior=prior)
        margin = 0.0
        if self._head_version >= 5 and np.isfinite(best) and np.isfinite(start):
            margin = paired_bootstrap_sd(self.task, np.asarray(y_val), self._proba(Xv),
                                         concat[3], seed=self.seed)
            margin = margin if np.isfinite(margin) else 0.0
        if np.isfinite(best) and (best > start + margin or not np.isfinite(start)):
            self.start_ = "random"
            return best, history
        self.start_ = "concat probe"
        self.module_ = concat[2]
        return start, concat[1]

    def _set_prior(self, share: np.ndarray) -> None:
        """Write the attention prior ``share`` (one weight per backbone, summing to 1) into
        the head: coordinate ``n_out`` of every projection gets LayerNorm gain 0, so it
        reads its offset, one number per backbone, log(share) (softmax) or logit(share)
        (sigmoid), and the scorer reads it with weight sqrt(dim) (undoing the softmax's
        division) or 1. Heads of version < 4, uniform attention or dim <= n_out: no prior."""
        model, j = self.module_, self.n_out_
        if self._head_version < 4 or self.attention == "uniform" or self.dim <= j:
            return
        with torch.no_grad():
            for norm, alpha in zip(model.norm, share, strict=True):
                norm.weight[j] = 0.0
                norm.bias[j] = float(math.log(alpha) if self.attention == "softmax"
                                     else math.log(alpha / (1 - alpha)))
            model.scorer.weight[0, j] = (math.sqrt(self.dim) if self.attention == "softmax"
                                         else 1.0)

    def _train(self, params: list[torch.Tensor], lr: float, Xt: _Rows,
               target: torch.Tensor, loss_fn: nn.Module, Xv: _Rows,
               y_val: np.ndarray, gen: torch.Generator, best: float,
               batch_size: int | None = None, val_target: torch.Tensor | None = None,
               prior: torch.Tensor | None = None) -> tuple[float, list[float]]:
        """Train ``params`` of the head with AdamW; early-stop on val, from ``best`` (the val
        score of the state it starts from): the best val state is kept. (best, history).
        With ``val_target``, a val score equal to the best moves the kept state on when the
        val loss falls (a small val's AUC saturates; its loss still tells)."""
        model = self.module_
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        best_state, stale, history = copy.deepcopy(model.state_dict()), 0, []
        # the projections unchanged (attention alone is trained): val projected once, and
        # each epoch scores val with one pass for both its metric and its loss
        frozen = not any(p is q for q in model.proj.parameters() for p in params)
        val_w = self._projections(Xv) if frozen else None

        def val_logits() -> torch.Tensor:
            return self._logits(Xv) if val_w is None else self._logits_projected(val_w)

        def val_loss(logits: torch.Tensor) -> float:
            """The training loss on val (inf without val targets: never a tie-breaker)."""
            return float("inf") if val_target is None else float(loss_fn(logits, val_target))

        best_loss = val_loss(val_logits()) if val_target is not None else float("inf")
        n = len(target)
        for _epoch in range(self.max_epochs):
            model.train()
            for idx in torch.randperm(n, generator=gen).split(batch_size or self.batch_size):
                idx = idx.to(self.device)
                opt.zero_grad(set_to_none=True)
                out, alpha = model.forward_with_attention(Xt.batch(idx))
                loss = loss_fn(out, target[idx])
                if prior is not None:  # the batch's mean attention stays near the prior
                    mean = alpha.mean(0)
                    mean = mean / mean.sum()  # sigmoid gates need not sum to 1
                    loss = loss + PRIOR_WEIGHT * (prior * (prior / mean).log()).sum()
                loss.backward()
                opt.step()
            logits = val_logits()
            score = primary_score(self.task, np.asarray(y_val),
                                  logits_to_proba(self.task, logits))
            history.append(float(score))
            progress.tick("DVME {} on {:,} rows: epoch {}, val {:.4f}", self.attention, n,
                          _epoch + 1, score)
            loss = val_loss(logits)
            if np.isfinite(score) and score > best + 1e-6:
                best, best_state, stale, best_loss = (score, copy.deepcopy(model.state_dict()),
                                                      0, loss)
            elif np.isfinite(score) and score >= best - 1e-12 and loss < best_loss - 1e-6:
                best_state, stale, best_loss = copy.deepcopy(model.state_dict()), 0, loss
            else:
                stale += 1
                if stale >= self.patience:
                    break
        model.load_state_dict(best_state)
        return best, history

    def _start_from_concat(self, Xt: _Rows, y: np.ndarray, Xv: _Rows,
                           y_val: np.ndarray) -> float:
        """Set the freshly built head to the linear probe on the concatenated (standardised)
        embeddings, L2 chosen on val, at uniform attention; its val score."""
        from featstore.probe.linear import fit_with_validation

        model, k = self.module_, len(Xt.parts)
        if self.dim < self.n_out_:
            raise FusionError(f"dim={self.dim}: a DVME head needs at least its {self.n_out_} "
                              "outputs")
        if self.concat_probe_ is None:  # before v6: a probe on the standardised copies
            cat = torch.cat(Xt.batch(slice(None)), 1).cpu().numpy()
            val = torch.cat(Xv.batch(slice(None)), 1).cpu().numpy()
            probe = fit_with_validation(cat, np.asarray(y), val,
                                        np.asarray(y_val), task=self.task,
                                        device=self.device).probe
            W = probe.coef_ / probe.scale_[:, None]  # (D, outputs) on these features
            b = probe.intercept_ - (probe.mean_ / probe.scale_) @ probe.coef_
        else:  # v6: the probe on the embeddings as given, x = s * x~ + m, onto the copies x~
            probe = self.concat_probe_.probe
            m, s = self._flat_standardiser()
            coef = probe.coef_.astype(np.float64)
            W = coef * (s / probe.scale_)[:, None]
            b = probe.intercept_ + ((m - probe.mean_) / probe.scale_) @ coef
        n_out = self.n_out_
        bounds = np.cumsum([0] + [X.shape[1] for X in Xt.parts])
        blocks = [W[bounds[i]:bounds[i + 1]] for i in range(k)]
        share = np.full(k, 1.0 / k)
        if self._head_version >= 4 and self.attention != "uniform" and self.dim > n_out:
            share = _evidence_shares(Xt, blocks)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            for proj, block, alpha in zip(model.proj, blocks, share, strict=True):
                # the fused vector sum_k alpha_k w_k is the probe's logit at the start
                proj.weight[:n_out] = torch.as_tensor(block.T / alpha, dtype=torch.float32)
            for norm in model.norm:
                norm.weight.fill_(1.0)
            model.head.weight[:, :n_out] = torch.eye(n_out)
            model.head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
            with_prior = (self._head_version >= 4 and self.attention != "uniform"
                          and self.dim > n_out)  # else uniform, sigmoid(c) = 1/k:
            if not with_prior and self.attention == "sigmoid" and k > 1:
                model.scorer.bias.fill_(math.log(1.0 / (k - 1)))
        self._set_prior(share)
        self.start_shares_ = share.tolist()
        return float(primary_score(self.task, np.asarray(y_val), self._proba(Xv)))

    @torch.inference_mode()
    def _logits(self, Xt: _Rows) -> torch.Tensor:
        """The head's logits (N, n_out), a block of rows at a time."""
        self.module_.eval()
        return torch.cat([self.module_(Xb) for _, Xb in Xt.blocks()])

    @torch.inference_mode()
    def _projections(self, Xt: _Rows) -> list[torch.Tensor]:
        """The projected rows (a (B, K, dim) tensor per block of rows)."""
        self.module_.eval()
        return [self.module_.project(Xb) for _, Xb in Xt.blocks()]

    @torch.inference_mode()
    def _logits_projected(self, projected: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`_logits` from :meth:`_projections` taken under the same projections."""
        self.module_.eval()
        return torch.cat([self.module_.forward_projected(w) for w in projected])

    def _proba(self, Xt: _Rows) -> np.ndarray:
        return logits_to_proba(self.task, self._logits(Xt))

    def predict_proba(self, Xs: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (N, C), or per-label probabilities (N, K) for multilabel."""
        return self._proba(self._rows(Xs))

    def predict(self, Xs: Sequence[np.ndarray]) -> np.ndarray:
        """Predicted class label (N,), or 0/1 labels (N, K) for multilabel."""
        return proba_to_labels(self.task, self.predict_proba(Xs))

    @torch.inference_mode()
    def attention_weights(self, Xs: Sequence[np.ndarray]) -> np.ndarray:
        """Per-row attention weight of each backbone, (N, K)."""
        self.module_.eval()
        return torch.cat([self.module_.weights(Xb)[1] for _, Xb in self._rows(Xs).blocks()]
                         ).cpu().numpy()

    def score(self, Xs: Sequence[np.ndarray], y: np.ndarray) -> float:
        """The task's primary metric."""
        return primary_score(self.task, np.asarray(y), self.predict_proba(Xs))

    def save(self, path: str | Path) -> None:
        """Write the head (state dict, standardisation, config, head version) to one torch
        file."""
        torch.save({"config": json.dumps(self._config()), "n_out": self.n_out_,
                    "version": self.module_.version,
                    "dims": [len(m) for m in self.means_],
                    "means": [m.cpu() for m in self.means_],
                    "scales": [s.cpu() for s in self.scales_],
                    "state_dict": {k: v.cpu() for k, v in self.module_.state_dict().items()}},
                   path)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> DVME:
        """A head written by :meth:`save`, ready for ``predict_proba``; a head written before
        head version 2 (no ``version`` in the file) loads as version 1 and predicts as it did.

        Raises
        ------
        FusionError
            The file is not a saved head, holds a head of an unknown version, or a state that
            does not fit the head its config describes; the message names the file.
        """
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            version, config = blob.get("version", 1), json.loads(blob["config"])
        except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, AttributeError,
                ValueError) as e:
            raise FusionError(f"{path}: not a DVME head written by DVME.save ({e})") from None
        if version not in range(1, HEAD_VERSION + 1):
            raise FusionError(f"{path}: DVME head version {version!r}; this featstore reads "
                              f"versions 1 to {HEAD_VERSION} (written by a newer featstore?)")
        head = cls(**config, device=device)
        head._head_version = version
        head.means_ = [m.to(device) for m in blob["means"]]
        head.scales_ = [s.to(device) for s in blob["scales"]]
        head.n_out_ = int(blob["n_out"])
        head._build(blob["dims"], head.n_out_)
        try:
            head.module_.load_state_dict(blob["state_dict"])
        except RuntimeError as e:
            lines = str(e).splitlines()
            raise FusionError(f"{path}: the saved state does not fit a version {version} DVME "
                              f"head ({(lines[1:] or lines)[0].strip()})") from None
        return head
