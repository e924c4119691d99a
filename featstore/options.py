"""One declaration per option: a stage's config dataclass says, field by field, what the
option means, its default, and which values it takes; the checks, the pipeline file's schema,
the command line's help and the argv of a re-launched command are read off those fields.

scikit-learn's ``_parameter_constraints`` is the model: constraints beside the parameters,
one validator for all of them, errors that name the parameter. Here the library's error says
``epochs = 0: expected at least 1`` and carries ``(name, value, expected)`` in its
``option`` attribute, so each front end words it in its own terms: the command line
``--epochs 0: expected at least 1``, a pipeline file ``[finetune] epochs = 0: ...``.

Torch-free and import-light: the CLI reads it to build ``--help``.
"""

from __future__ import annotations

import math
import numbers
import re
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from featstore.errors import FeatstoreError


@dataclass(frozen=True)
class Constraint:
    """What one option takes. Bounds are inclusive unless ``*_open``; a float option must be
    finite unless a bound says otherwise; ``optional``: None is allowed (and means the
    documented default behaviour); a list option takes each value once unless
    ``distinct=False`` (a range's two ends may be equal); ``device``: a torch device
    (:func:`device_problem`); ``flag``: the front ends' name where it differs from the
    field's (``n_bootstrap`` is ``--bootstrap`` and ``bootstrap =``); ``cli``: the command
    line's, where it differs from the file's (``--attention``, ``attentions =``); ``where``
    the option is set: ``both`` (a command-line option and a pipeline-file key), ``cli`` (the
    command line only: a pipeline takes it from elsewhere, as precision from
    ``[backbones]``) or ``""`` (neither: the front end fills it in, as the task from the
    manifest)."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False
    finite: bool = True  # False: inf is a value too (a timeout that never runs out)
    distinct: bool = True
    device: bool = False
    flag: str | None = None
    cli: str | None = None
    where: str = "both"

    def expected(self, integer: bool = False, many: bool = False,
                 value: float | None = None) -> str:
        """What the option takes, in words (``integer``: worded for a whole number, the
        bound ``value`` is beyond where it has two: ``at most 65536``; ``many``: for the
        items of a list)."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        a = "values" if many else "a value"
        lo = None if self.low is None else _number(self.low)
        hi = None if self.high is None else _number(self.high)
        if integer and value is not None and hi is not None and not (
                self.low_open or self.high_open):
            return f"at most {hi}" if value > self.high else f"at least {lo}"
        if lo is not None and hi is not None:
            return (f"{a} in {'(' if self.low_open else '['}{lo}, {hi}"
                    f"{')' if self.high_open else ']'}")
        if lo is not None:
            return (f"{a} > {lo}" if self.low_open else
                    f"at least {lo}" if integer or self.low >= 1 else
                    f"{'finite values' if many else 'a finite value'} >= {lo}")
        if hi is not None:
            return f"{a} {'<' if self.high_open else '<='} {hi}"
        return self.help.rstrip(".").lower()

    def accepts(self, value: Any) -> bool:
        """Whether the option takes ``value`` (one value; a list's items one by one)."""
        if value is None:
            return self.optional
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return True  # strings, tuples: their own checks
        if isinstance(value, float) and math.isnan(value) or (
                self.finite and isinstance(value, float) and math.isinf(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None
                    and (value >= self.high if self.high_open else value > self.high))

    def problem(self, value: Any, here: bool = True) -> tuple[Any, str] | None:
        """None where the option takes ``value``; else the value to name (a list's first
        bad or repeated item) and what is wrong with it. ``here``: a device must be on this
        machine (not only a device's name)."""
        if self.device and value is not None:
            text = device_problem(value, here)
            return None if text is None else (value, text)
        if not isinstance(value, list | tuple):
            return None if self.accepts(value) else (value, "expected " + self.expected(
                _integer(value), value=value))
        items = self.low is not None or self.high is not None or self.choices is not None
        if items and not value:
            return value, "expected at least one value"
        for v in value:
            if items and not self.accepts(v):
                return v, "expected " + self.expected(_integer(v), many=True, value=v)
        seen: list[Any] = []
        for v in value if self.distinct else ():
            if v in seen:
                return v, "repeated (expected each value once)"
            seen.append(v)
        return None


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(x: float) -> str:
    """A bound in words: 65536, not 6.5536e+04; 0.5 as 0.5."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def option(default: Any = MISSING, help: str = "", **constraint: Any) -> Any:
    """A config dataclass field with its :class:`Constraint`."""
    return field(default=default, metadata={"option": Constraint(help=help, **constraint)})


def constraints(cls: type, where: str | None = None) -> dict[str, Constraint]:
    """Field name -> constraint, for the fields of ``cls`` that declare one (and are set
    ``where``, if given)."""
    return {f.name: f.metadata["option"] for f in fields(cls) if "option" in f.metadata
            and where in (None, f.metadata["option"].where)}


def flag(cls: type, name: str) -> str:
    """The front ends' name of field ``name`` (``n_bootstrap`` -> ``bootstrap``)."""
    return constraints(cls)[name].flag or name


def default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def from_settings(cls: type, settings: dict[str, Any], where: str = "both", **fixed: Any):
    """``cls`` built from ``settings`` (front-end names: ``bootstrap``, not ``n_bootstrap``)
    for its fields set ``where``; other keys are not its own and are left out; ``fixed``
    fills the rest. Defaults where ``settings`` is silent or None."""
    names = {c.flag or n: n for n, c in constraints(cls, where).items()}
    return cls(**{names[k]: v for k, v in settings.items() if k in names and v is not None},
               **fixed)


def refused(error: type[FeatstoreError], name: str, value: Any, problem: str, *,
            cli: str | None = None) -> FeatstoreError:
    """``error`` for a bad value of option ``name`` (``cli``: its command-line name, where
    that differs), saying what is wrong (``problem``); its ``option`` attribute set, so each
    front end words it its own way."""
    e = error(f"{name} = {value!r}: {problem}")
    e.option = (name, value, problem, cli or name)
    return e


def invalid(error: type[FeatstoreError], name: str, value: Any, expected: str, *,
            cli: str | None = None) -> FeatstoreError:
    """``error`` for a bad value of option ``name``: ``name = value: expected ...``."""
    return refused(error, name, value, f"expected {expected}", cli=cli)


def check(config: Any, error: type[FeatstoreError], here: bool = True) -> None:
    """Raise ``error`` (via :func:`refused`) naming the first field of ``config`` whose value
    its constraint refuses, then run the config's rules between fields
    (``config.cross_check(error)``, where it has them). ``here``: a device option names a
    device of this machine (a pipeline whose steps run elsewhere, on Slurm, checks the
    name only)."""
    for name, c in constraints(type(config)).items():
        bad = c.problem(getattr(config, name), here)
        if bad is not None:
            raise refused(error, c.flag or name, *bad, cli=c.cli)
    if hasattr(config, "cross_check"):
        config.cross_check(error)


def cli_message(e: FeatstoreError) -> str:
    """The error as the command line words it: ``--warmup-epochs 2: expected ...``."""
    if e.option is None:
        return str(e)
    _, value, problem, cli = e.option
    return f"--{cli.replace('_', '-')} {value!r}: {problem}"


def file_message(e: FeatstoreError, section: str) -> str:
    """The error as a pipeline file words it: ``[finetune] lr = inf: expected ...`` (a
    top-level key, ``section`` empty: ``seeds = 0: ...``)."""
    return f"[{section}] {e}" if section else str(e)


# torch devices featstore computes on (auto: a CUDA GPU where there is one, else the CPU)
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
_BACKENDS = {"cuda": "CUDA GPU", "xpu": "XPU", "mps": "MPS device"}


def device_problem(device: Any, here: bool = True) -> str | None:
    """What is wrong with ``device`` as a torch device to compute on, None if nothing: not a
    device name, or (``here``) not on this machine. Imports torch only to look for a GPU."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        return "not a torch device (auto, cpu, cuda, cuda:N, mps, xpu)"
    if not here or device in ("auto", "cpu"):
        return None
    import torch

    kind, _, index = device.partition(":")
    backend = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)
    count = (backend is not None and backend.is_available()) and (
        1 if kind == "mps" else backend.device_count())
    what = _BACKENDS[kind]
    if not count:
        return f"no {what} on this machine (use cpu, or auto)"
    if index and int(index) >= count:
        return (f"this machine has {count} {what}{'s' if count > 1 else ''} ({kind}:0"
                + (f" to {kind}:{count - 1})" if count > 1 else ")"))
    return None


def resolved_device(device: str) -> str:
    """``auto``: ``cuda`` where this machine has a CUDA GPU, else ``cpu``; another device as
    named. Imports torch only for ``auto``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def toml_types(cls: type) -> dict[str, tuple[tuple[type, ...], str]]:
    """The pipeline file's schema of ``cls``'s fields a file sets: key -> (accepted TOML
    types, what is expected). A float field takes TOML integers too (``lr = 1``)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, c in constraints(cls).items():
        if c.where != "both":
            continue
        hint = hints[name]
        if typing.get_origin(hint) in (tuple, list):  # a TOML array
            item = typing.get_args(hint)[0]
            out[c.flag or name] = (list, "a list of " + (
                ", ".join(c.choices) if c.choices is not None else _PLURAL[item]))
            continue
        kinds = tuple(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
        if float in kinds:
            kinds = (*kinds, int)
        out[c.flag or name] = (kinds, c.expected() if c.choices is not None
                               else _KIND_WORDS[kinds[0]])
    return out


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def argv(config: Any, where: tuple[str, ...] = ("both", "cli")) -> list[str]:
    """The command-line options that give ``config``'s fields set ``where`` their values
    (None left out; a boolean only where it differs from its default, as ``--x`` or
    ``--no-x``): what a re-launched command gets."""
    out: list[str] = []
    for f in fields(config):
        c = f.metadata.get("option")
        value = getattr(config, f.name)
        if c is None or c.where not in where or value is None:
            continue
        opt = "--" + (c.flag or f.name).replace("_", "-")
        if isinstance(value, bool):
            if value != f.default:
                out.append(opt if value else "--no-" + opt[2:])
        elif isinstance(value, list | tuple):  # the command line's comma-separated form
            out += [opt, ",".join(map(str, value))]
        else:
            out += [opt, str(value)]
    return out
