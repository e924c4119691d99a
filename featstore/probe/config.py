"""The probe recipe: each option declared once, with its help and the values it takes
(:mod:`featstore.options`); ``featstore probe``'s help and defaults and the ``[probe]`` keys
of a pipeline file are read off it. Torch-free and light."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
from featstore.runkeys import run_id as run_key


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
        """The configuration a run persists and shows: the fields, and for a linear probe
        the solver that fitted it (``LINEAR_SOLVER``)."""
        out = asdict(self)
        if self.probe == "linear":
            out["solver"] = LINEAR_SOLVER
        return out

    def run_id(self, embedding_key: str, val_carve: str | None = None) -> str:
        """Content key of a run: the config (with a linear probe's solver), the embeddings,
        how val was carved (when it was) and the featstore version."""
        payload: dict[str, Any] = {"config": self.stored(), "embedding_key": embedding_key}
        if val_carve is not None:
            payload["val_carve"] = val_carve
        return run_key(payload)
