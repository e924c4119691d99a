"""What the probing stages (probe, fuse, finetune) share besides their recipes: the grid of
fractions x seeds, the bootstrap of every run's CI and the device they compute on. Each
option declared once (:mod:`featstore.options`): ``--fractions``, ``--seeds``,
``--bootstrap`` and ``--device`` of the three verbs, the same keys of a pipeline file (top
level and each stage's) and the checks of ``probe_grid``, ``fuse_grid`` and
``finetune_grid`` are read off these fields. Torch-free and light."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featstore import options
from featstore.choices import MAX_BOOTSTRAP, MAX_SEEDS, PROBES
from featstore.errors import FeatstoreError
from featstore.options import option


def bootstrap_option() -> Any:
    """The bootstrap of a run's CI, as each config that keys runs declares it (one
    declaration, a field each)."""
    return option(1000, "Bootstrap resamples of the test metric's 95% CI (0: none).", low=0,
                  high=MAX_BOOTSTRAP, flag="bootstrap")


@dataclass(frozen=True)
class GridSettings:
    """The runs a probing stage makes besides its recipe, and where it computes them."""

    fractions: tuple[float, ...] = option(
        (1.0,), "Comma-separated fractions of train to train on, e.g. 0.01,0.1,1.0.", low=0,
        high=1, low_open=True)
    # a count N (seeds 0..N-1), or the seeds themselves (a pipeline file's list)
    seeds: int | tuple[int, ...] = option(1, "Seeds per fraction (subsets drawn with seeds "
                                          "0..N-1).")
    n_bootstrap: int = bootstrap_option()
    device: str = option("cpu", "Torch device: cpu, cuda, cuda:1, mps, or auto (a GPU when "
                         "there is one; under torchrun, this rank's).", device=True)

    def __post_init__(self) -> None:  # a list from a file or the command line
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        if not isinstance(self.seeds, int):
            object.__setattr__(self, "seeds", tuple(self.seeds))

    def cross_check(self, error: type[FeatstoreError]) -> None:
        """A count of seeds is 1 to ``MAX_SEEDS``; listed seeds are ``MAX_SEEDS`` at most,
        none negative."""
        count = self.seeds if isinstance(self.seeds, int) else len(self.seeds)
        if count > MAX_SEEDS:
            raise options.invalid(error, "seeds", count, f"at most {MAX_SEEDS} seeds")
        if count < 1 or min(self.seed_list()) < 0:
            raise options.invalid(error, "seeds", self.seeds if isinstance(self.seeds, int)
                                  else list(self.seeds), "at least one seed, none negative")

    def check(self, error: type[FeatstoreError] = FeatstoreError,
              here: bool = True) -> GridSettings:
        """Raise ``error`` naming the first bad value (its ``option`` says which)."""
        options.check(self, error, here)
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class ProbeGrid(GridSettings):
    """A probe grid: the probes besides the fractions and seeds."""

    probes: tuple[str, ...] = option(("linear",), "Probes, comma-separated: linear, knn or "
                                     "linear,knn.", choices=PROBES, cli="probe")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "probes", tuple(self.probes))
