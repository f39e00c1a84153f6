"""Declarative checks of a trainer's class attributes (its settings).

A trainer declares ``settings_checks = {"attribute": check, ...}``; the base merges the tables over the class
hierarchy (a subclass's entry replaces its parent's) and checks every attribute once, when the trainer is made and
when nnU-Net's predictor builds its network, raising :class:`~nnunet_ssl.errors.SSLConfigError` with the trainer
class, the attribute, the allowed values and the value found.
"""
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict

from nnunet_ssl.blocks.mixing import CutMix
from nnunet_ssl.errors import SSLConfigError


@dataclass(frozen=True)
class Allowed:
    """The values a setting may take: ``accepts(value)``, described for the error message."""
    description: str
    accepts: Callable[[Any], bool]


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def one_of(*choices) -> Allowed:
    return Allowed(f"one of {', '.join(map(repr, choices))}",
                   lambda value: any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices))


def at_least(minimum: float) -> Allowed:
    return Allowed(f"a number >= {minimum}", lambda value: _is_number(value) and value >= minimum)


def above(minimum: float) -> Allowed:
    return Allowed(f"a number > {minimum}", lambda value: _is_number(value) and value > minimum)


def count(minimum: int = 1) -> Allowed:
    return Allowed(f"an integer >= {minimum}",
                   lambda value: isinstance(value, numbers.Integral) and not isinstance(value, bool)
                   and value >= minimum)


def fraction(closed_above: bool = True, closed_below: bool = True) -> Allowed:
    """A number in [0, 1], or with an open end where asked (e.g. a dropout probability in [0, 1))."""
    interval = f"{'[' if closed_below else '('}0, 1{']' if closed_above else ')'}"
    return Allowed(f"a number in {interval}", lambda value: _is_number(value)
                   and (value >= 0 if closed_below else value > 0) and (value <= 1 if closed_above else value < 1))


def optional(allowed: Allowed) -> Allowed:
    return Allowed(f"None or {allowed.description}", lambda value: value is None or allowed.accepts(value))


def fraction_range() -> Allowed:
    """A (low, high) pair with 0 < low <= high <= 1."""
    return Allowed("a pair (low, high) with 0 < low <= high <= 1",
                   lambda value: isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_number, value))
                   and 0 < value[0] <= value[1] <= 1)


def instance_of(cls: type) -> Allowed:
    return Allowed(f"a {cls.__name__}", lambda value: isinstance(value, cls))


def cutmix_setting() -> Allowed:
    volume = fraction_range()
    return Allowed(f"a CutMix with probability in [0, 1] and volume {volume.description}",
                   lambda value: isinstance(value, CutMix) and _is_number(value.probability)
                   and 0 <= value.probability <= 1 and volume.accepts(value.volume))


BOOLEAN = one_of(True, False)


def check_settings(trainer_class: type, table: Dict[str, Allowed], renamed: Dict[str, str]) -> None:
    """Raise SSLConfigError for the first attribute of ``trainer_class`` outside ``table``'s allowed values, or set
    under an old name of ``renamed`` (old name -> new name)."""
    for old, new in renamed.items():
        if hasattr(trainer_class, old):
            raise SSLConfigError(f"{trainer_class.__name__}.{old} is no longer a setting: set {new} instead "
                                 f"({table[new].description})")
    for name, allowed in table.items():
        value = getattr(trainer_class, name)
        if not allowed.accepts(value):
            raise SSLConfigError(f"{trainer_class.__name__}.{name} must be {allowed.description}, got {value!r}")
