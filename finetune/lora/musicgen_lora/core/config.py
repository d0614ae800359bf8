"""Typed settings that carry their own flags: a command's config is a dataclass, and each field made
with `setting()` holds its flag's help, value type (a range-checked number type below), group,
choices and other spellings. cli/args.py derives the argparse parser from the fields, so a setting
is declared once, and a flag on the command line, the same key in a YAML file and a value passed by
a library caller meet the same rule (`check_settings`). No torch here: --help stays instant.

Why not transformers' HfArgumentParser: it takes a field's Python type as the flag's type, so ranges
(a positive int, a probability) would be unchecked, and its errors are argparse's usage dumps rather
than the toolkit's one `error:` line.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, field, fields

from musicgen_lora.core.common import UserError


def setting(default=None, help: str = "", *, type=None, group: str = "", aliases=(), choices=None, metavar=None,
            nargs=None, action=None):
    """A dataclass field that is also a flag: --<field name> (plus `aliases`, other spellings kept for
    older command lines), with `help` and `type` (a number type below: the range is checked while
    parsing and by check_settings). A bool default makes an on/off switch; a list default a flag
    taking several values (nargs "+" unless given, or action "append": the flag repeated)."""
    meta = {"help": help, "type": type, "group": group, "aliases": tuple(aliases), "choices": choices,
            "metavar": metavar, "nargs": nargs, "action": action}
    if isinstance(default, list):
        return field(default_factory=default.copy, metadata=meta)
    return field(default=default, metadata=meta)


def flag_fields(cls) -> list:
    """The fields of a config class that are flags (made with `setting`)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def default_of(f):
    return f.default_factory() if f.default is MISSING else f.default


def check_settings(cfg):
    """Each setting's own rule (type, range, choices), for a config built in code rather than parsed:
    one UserError naming the flag. Returns cfg."""
    for f in flag_fields(cfg):
        value, m = getattr(cfg, f.name), f.metadata
        if value is None or isinstance(default_of(f), bool):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if m["type"] is not None:
                try:
                    m["type"](v)
                except argparse.ArgumentTypeError as e:
                    raise UserError(f"--{f.name}: {e}") from None
            if m["choices"] is not None and v not in m["choices"]:
                raise UserError(f"--{f.name} {v}: choose one of {', '.join(map(str, m['choices']))}")
    return cfg


def number_type(kind, low=None, high=None, low_open=False, high_open=False, words=None):
    """A flag type: a finite `kind` (int or float) within [low, high] (open ends where asked).

    Accepts strings (command line) and numbers (YAML); argparse turns the ArgumentTypeError into
    `error: argument --flag: ...`.
    """
    if words is None:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        words = ("a whole number" if kind is int else "a number") + (" " + " and ".join(bounds) if bounds else "")

    def parse(value):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if kind is float else int(value) if not isinstance(value, float) else value
            if kind is int and (isinstance(number, float) and not number.is_integer()):
                raise ValueError
            number = kind(number)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{value!r} is not {words}") from None
        if kind is float and not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{value!r} is not {words}")
        if low is not None and (number < low or (low_open and number == low)):
            raise argparse.ArgumentTypeError(f"{value!r} is not {words}")
        if high is not None and (number > high or (high_open and number == high)):
            raise argparse.ArgumentTypeError(f"{value!r} is not {words}")
        return number

    parse.__name__ = kind.__name__  # what argparse and config files call the type
    return parse


positive_int = number_type(int, low=1)
nonneg_int = number_type(int, low=0)
any_int = number_type(int)
# torch's generators take 64-bit seeds; prompts add their sample number, numpy takes no negatives.
SEED_LIMIT = 2**63
seed_int = number_type(int, low=0, high=SEED_LIMIT, high_open=True, words="a whole number in [0, 2^63)")
positive_float = number_type(float, low=0, low_open=True)
nonneg_float = number_type(float, low=0)
finite_float = number_type(float)
probability = number_type(float, low=0, high=1, words="a probability in [0, 1]")
dropout = number_type(float, low=0, high=1, high_open=True, words="a dropout probability in [0, 1)")
fraction = number_type(float, low=0, high=1, high_open=True, words="a fraction in [0, 1)")
positive_fraction = number_type(float, low=0, low_open=True, high=1, words="a fraction in (0, 1]")


