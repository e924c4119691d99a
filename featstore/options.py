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
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from featstore.errors import FeatstoreError


@dataclass(frozen=True)
class Constraint:
    """What one option takes. Bounds are inclusive unless ``*_open``; a float option must be
    finite unless a bound says otherwise; ``optional``: None is allowed (and means the
    documented default behaviour); ``flag``: the front ends' name where it differs from the
    field's (``n_bootstrap`` is ``--bootstrap`` and ``bootstrap =``); ``where`` the option is
    set: ``both`` (a command-line option and a pipeline-file key), ``cli`` (the command line
    only: a pipeline takes it from elsewhere, as precision from ``[backbones]``) or ``""``
    (neither: the front end fills it in, as the task from the manifest)."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False
    finite: bool = True  # False: inf is a value too (a timeout that never runs out)
    flag: str | None = None
    where: str = "both"

    def expected(self, integer: bool = False) -> str:
        """What the option takes, in words (``integer``: worded for a whole number)."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        lo = None if self.low is None else f"{self.low:g}"
        hi = None if self.high is None else f"{self.high:g}"
        if lo is not None and hi is not None:
            return (f"a value in {'(' if self.low_open else '['}{lo}, {hi}"
                    f"{')' if self.high_open else ']'}")
        if lo is not None:
            return (f"a value > {lo}" if self.low_open else
                    f"at least {lo}" if integer or self.low >= 1 else f"a finite value >= {lo}")
        if hi is not None:
            return f"a value {'<' if self.high_open else '<='} {hi}"
        return self.help.rstrip(".").lower()

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, list | tuple) and not (self.low is None and self.high is None
                                                    and self.choices is None):
            return len(value) > 0 and all(self.accepts(v) for v in value)  # each item
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


def invalid(error: type[FeatstoreError], name: str, value: Any,
            expected: str) -> FeatstoreError:
    """``error`` for a bad value of option ``name``, its ``option`` attribute set."""
    e = error(f"{name} = {value!r}: expected {expected}")
    e.option = (name, value, expected)
    return e


def check(config: Any, error: type[FeatstoreError]) -> None:
    """Raise ``error`` (via :func:`invalid`) naming the first field of ``config`` whose
    value its constraint refuses."""
    for name, c in constraints(type(config)).items():
        value = getattr(config, name)
        if c.accepts(value):
            continue
        if isinstance(value, list | tuple):  # name the first bad item (or the empty list)
            bad = [v for v in value if not c.accepts(v)]
            if not bad:
                raise invalid(error, c.flag or name, value, "at least one value")
            value = bad[0]
        integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        raise invalid(error, c.flag or name, value, c.expected(integer))


def cli_message(e: FeatstoreError) -> str:
    """The error as the command line words it: ``--warmup-epochs 2: expected ...``."""
    if e.option is None:
        return str(e)
    name, value, expected = e.option
    return f"--{name.replace('_', '-')} {value!r}: expected {expected}"


def file_message(e: FeatstoreError, section: str) -> str:
    """The error as a pipeline file words it: ``[finetune] lr = inf: expected ...``."""
    return f"[{section}] {e}"


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
