"""The probe recipe: each option declared once, with its help and the values it takes
(:mod:`featstore.options`); ``featstore probe``'s help and defaults and the ``[probe]`` keys
of a pipeline file are read off it. Torch-free and light."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from featstore.choices import (
    DEFAULT_KS,
    DEFAULT_L2_GRID,
    DEFAULT_TOL,
    LINEAR_SOLVER,
    MAX_K,
    ORDINAL_DECODES,
    PROBES,
    TASKS,
)
from featstore.grid import bootstrap_option
from featstore.options import option
from featstore.runkeys import decision_rule, run_ids


@dataclass(frozen=True)
class ProbeConfig:
    """Everything that determines a probe run's numbers besides the embeddings."""

    probe: str = option("linear", "The probe.", choices=PROBES, where="")
    task: str = option("binary", "The task (the manifest's).", choices=TASKS, where="")
    fraction: float = option(1.0, "Labelled fraction of the training rows.", low=0, high=1,
                             low_open=True, where="")
    seed: int = option(0, "Seed of the fraction's rows.", low=0, where="")
    l2_grid: tuple[float, ...] = option(DEFAULT_L2_GRID, "L2 values the linear probe chooses "
                                        "from on val (default: 1e-6..1e4, 11 log steps).",
                                        low=0, low_open=True)
    ks: tuple[int, ...] = option(DEFAULT_KS, "k values the kNN probe chooses from on val.",
                                 low=1, high=MAX_K)
    tol: float = option(DEFAULT_TOL, "Solver tolerance.", low=0, low_open=True, where="")
    max_iter: int = option(500, "Solver iterations at most.", low=1, where="")
    n_bootstrap: int = bootstrap_option()
    ordinal_decode: str = option("argmax", "Ordinal tasks: argmax, or expected (expected "
                                 "grade, thresholds fitted on val).", choices=ORDINAL_DECODES)

    def __post_init__(self) -> None:  # a list from a file or the CLI: the tuple runs hash
        object.__setattr__(self, "l2_grid", tuple(float(v) for v in self.l2_grid))
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))

    def stored(self) -> dict[str, Any]:
        """The configuration a run persists and shows: the fields, those this probe does not
        use at their defaults (:meth:`unused`: another ``--ks`` is the same linear run), and
        for a linear probe the solver that fitted it (``LINEAR_SOLVER``), for a binary task
        the rule that decided its labels (``THRESHOLD_RULE``)."""
        return {**self._given(), **self.unused(self.probe, self.task)}

    @staticmethod
    def unused(probe: str, task: str) -> dict[str, Any]:
        """The settings a ``probe`` on ``task`` does not use, at their defaults: ``ks`` for a
        linear probe; ``l2_grid``, ``tol`` and ``max_iter`` for kNN; ``ordinal_decode``
        outside ordinal tasks. The defaults keep the ids runs of default settings always had."""
        names = _UNUSED.get(probe, ()) + (() if task == "ordinal" else ("ordinal_decode",))
        return {n: _DEFAULTS[n] for n in names}

    def run_id(self, embedding_key: str, val_carve: str | None = None) -> str:
        """Content key of a run: the config as :meth:`stored` (with a linear probe's
        solver), the embeddings, how val was carved (when it was) and the featstore
        version."""
        return self.run_ids(embedding_key, val_carve)[0]

    def run_ids(self, embedding_key: str, val_carve: str | None = None) -> tuple[str, ...]:
        """The ids a run of this config is found under: :meth:`run_id`, then the id an
        earlier featstore gave the same run where it differs (it keyed the unused settings
        as given: a linear run of ``ks=[5]``)."""
        return run_ids(*(_payload(c, embedding_key, val_carve)
                         for c in (self.stored(), self._given())))

    def _given(self) -> dict[str, Any]:
        out = asdict(self)
        if self.probe == "linear":
            out["solver"] = LINEAR_SOLVER
        return {**out, **decision_rule(self.task)}


# the fields each probe leaves unused (beside ordinal_decode outside ordinal tasks)
_UNUSED = {"linear": ("ks",), "knn": ("l2_grid", "tol", "max_iter")}
_DEFAULTS = {f.name: f.default for f in fields(ProbeConfig)}


def _payload(config: dict[str, Any], embedding_key: str, val_carve: str | None
             ) -> dict[str, Any]:
    payload: dict[str, Any] = {"config": config, "embedding_key": embedding_key}
    if val_carve is not None:
        payload["val_carve"] = val_carve
    return payload
