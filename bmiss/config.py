"""Validated, frozen settings: the one mechanism behind every settings dataclass of bmiss.

A settings class is a frozen dataclass deriving from :class:`Settings`; each field's type
annotation says what it holds and :func:`setting` adds its range or choices. On construction
(and :meth:`Settings.replace`) every field is checked: booleans must be booleans (the text
``"false"`` is refused, not taken as true), integers integers, numbers finite and inside their
range, choices among their choices; lists become tuples. A field whose type is another
:class:`Settings` is a nested group, reached with dotted keys (``subject_fit.n_starts``).

Text from the command line is parsed by the field's type (:func:`parse_value`): booleans
``true/false/yes/no/on/off/1/0``, numbers, ``none``, tuples as ``20,450`` or ``(20, 450)``.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import numbers
import types
import typing
from typing import Any

from .errors import SettingsError, did_you_mean

__all__ = ["Settings", "setting", "parse_value", "field_types", "as_dict"]


def setting(default=dataclasses.MISSING, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=None,
            default_factory=dataclasses.MISSING):
    """A dataclass field with a checked range (``lo``/``hi``, open or closed) or ``choices``."""
    md = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def field_types(cls) -> dict[str, Any]:
    """Resolved type annotations of a settings class's fields."""
    mod = __import__(cls.__module__, fromlist=["_"])
    return typing.get_type_hints(cls, globalns=vars(mod))


def _optional(tp) -> tuple[Any, bool]:
    """``(inner type, None allowed)`` of ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), len(args) < len(typing.get_args(tp))
    return tp, False


def _describe(tp) -> str:
    tp, opt = _optional(tp)
    o = typing.get_origin(tp)
    if o is tuple:
        args = typing.get_args(tp)
        inner = f"{_describe(args[0])}s" if len(args) == 2 and args[1] is Ellipsis else \
            ", ".join(_describe(a) for a in args)
        s = f"a tuple of {inner}"
    else:
        s = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(tp, getattr(tp, "__name__",
                                                                                                     str(tp)))
    return s + (" or none" if opt else "")


def _range_text(md) -> str:
    lo, hi = md.get("lo"), md.get("hi")
    if lo is None and hi is None:
        return ""
    left = "(" if md.get("lo_open") else "["
    right = ")" if md.get("hi_open") else "]"
    return f" in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def _check_scalar(name: str, tp, v, md):
    """Check (and lightly normalise: numpy scalars, int for a float) one scalar value."""
    if tp is bool:
        if isinstance(v, bool) or (hasattr(v, "dtype") and v.dtype == bool):
            return bool(v)
        raise SettingsError(f"{name} = {v!r}: must be true or false")
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise SettingsError(f"{name} = {v!r}: must be an integer{_range_text(md)}")
        v = int(v)
    elif tp is float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise SettingsError(f"{name} = {v!r}: must be a number{_range_text(md)}")
        v = float(v)
        if not math.isfinite(v):
            raise SettingsError(f"{name} = {v!r}: must be a finite number{_range_text(md)}")
    elif tp is str:
        if not isinstance(v, str):
            raise SettingsError(f"{name} = {v!r}: must be text")
    lo, hi = md.get("lo"), md.get("hi")
    if tp in (int, float):
        bad_lo = lo is not None and (v <= lo if md.get("lo_open") else v < lo)
        bad_hi = hi is not None and (v >= hi if md.get("hi_open") else v > hi)
        if bad_lo or bad_hi:
            raise SettingsError(f"{name} = {v!r}: out of range; allowed{_range_text(md)}")
    ch = md.get("choices")
    if ch is not None and v not in ch:
        raise SettingsError(f"{name} = {v!r}: choose one of {', '.join(map(str, ch))}{did_you_mean(v, map(str, ch))}")
    return v


def _check(name: str, tp, v, md):
    tp, opt = _optional(tp)
    if tp is Any or tp is object:
        return v
    if v is None:
        if opt:
            return None
        raise SettingsError(f"{name}: none is not allowed; it must be {_describe(tp)}{_range_text(md)}")
    if isinstance(tp, type) and issubclass(tp, Settings):
        if isinstance(v, bool) and "enabled" in {f.name for f in dataclasses.fields(tp)}:
            return tp(enabled=v)  # ``group=true/false`` is short for ``group.enabled``
        if isinstance(v, dict):
            return tp(**v)
        if not isinstance(v, tp):
            short = " or true or false" if "enabled" in {f.name for f in dataclasses.fields(tp)} else ""
            raise SettingsError(f"{name} = {v!r}: expected {tp.__name__} (or a dict of its fields{short})")
        return v
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
            raise SettingsError(f"{name} = {v!r}: must be {_describe(tp)}")
        v = tuple(v)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(f"{name}[{i}]", args[0], x, md) for i, x in enumerate(v))
        if len(v) != len(args):
            raise SettingsError(f"{name} = {v!r}: must be {_describe(tp)} ({len(args)} values)")
        return tuple(_check(f"{name}[{i}]", a, x, md) for i, (a, x) in enumerate(zip(args, v)))
    if typing.get_origin(tp) is typing.Union:  # e.g. int | str
        for a in typing.get_args(tp):
            try:
                return _check(name, a, v, md)
            except SettingsError:
                pass
        raise SettingsError(f"{name} = {v!r}: must be {_describe(tp)}")
    return _check_scalar(name, tp, v, md)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of bmiss's settings dataclasses: every field checked on construction (see module docstring)."""

    def __post_init__(self):
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            v = _check(f"{type(self).__name__}.{f.name}", hints[f.name], getattr(self, f.name), f.metadata)
            object.__setattr__(self, f.name, v)
        self.validate()

    def validate(self) -> None:
        """Checks between fields (override); raise :class:`~bmiss.errors.SettingsError`."""

    def replace(self, **kw):
        """A copy with ``kw`` applied (dotted keys reach nested groups), checked again."""
        return apply(self, kw)


def apply(obj: Settings, kw: dict) -> Settings:
    """``obj`` with keyword overrides; ``"group.field"`` keys (or ``group={...}`` dicts) reach nested groups."""
    names = {f.name for f in dataclasses.fields(obj)}
    flat, nested = {}, {}
    for k, v in kw.items():
        head, _, rest = k.partition(".")
        if head not in names:
            raise SettingsError(f"{type(obj).__name__} has no setting {head!r}{did_you_mean(head, names)}; "
                                f"valid: {', '.join(sorted(names))}")
        if rest:
            nested.setdefault(head, {})[rest] = v
        else:
            flat[k] = v
    for head, sub in nested.items():
        cur = flat.pop(head, getattr(obj, head))
        if isinstance(cur, dict):
            cur = field_types(type(obj))[head](**cur)
        if not isinstance(cur, Settings):
            raise SettingsError(f"{head} is not a group of settings; set {head}=VALUE")
        flat[head] = apply(cur, sub)
    for head, v in list(flat.items()):
        cur = getattr(obj, head)
        if isinstance(cur, Settings) and isinstance(v, dict):
            flat[head] = apply(cur, v)
        elif isinstance(cur, Settings) and isinstance(v, bool) and hasattr(cur, "enabled"):
            flat[head] = apply(cur, {"enabled": v})  # ``group=false`` is short for ``group.enabled=false``
    return dataclasses.replace(obj, **flat)


def _parse_text(name: str, tp, text: str):
    tp, opt = _optional(tp)
    t = text.strip()
    if opt and t.lower() in ("none", "null", ""):
        return None
    if tp is bool:
        low = t.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise SettingsError(f"{name}={text!r}: must be true or false (also yes/no, on/off, 1/0)")
    if tp is int:
        try:
            return int(t)
        except ValueError:
            raise SettingsError(f"{name}={text!r}: must be an integer") from None
    if tp is float:
        try:
            v = float(t)
        except ValueError:
            raise SettingsError(f"{name}={text!r}: must be a number") from None
        return v
    if typing.get_origin(tp) is tuple:
        s = t[1:-1] if t[:1] in "([" and t[-1:] in ")]" else t
        if t.lower() in ("none", "()", ""):
            parts = []
        else:
            parts = [p for p in (x.strip() for x in s.split(",")) if p != ""]
        args = typing.get_args(tp)
        inner = [args[0]] * len(parts) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(inner) != len(parts):
            raise SettingsError(f"{name}={text!r}: must be {_describe(tp)}, e.g. {name}=" +
                                ",".join(["20", "450"][: len(args)] if len(args) <= 2 else ["..."]))
        return tuple(_parse_text(name, a, p) for a, p in zip(inner, parts))
    if tp is str:
        return t
    if tp is Any or tp is object:
        try:
            return ast.literal_eval(t)
        except (ValueError, SyntaxError):
            return t
    if typing.get_origin(tp) is typing.Union:
        for a in typing.get_args(tp):
            try:
                return _parse_text(name, a, text)
            except SettingsError:
                pass
        raise SettingsError(f"{name}={text!r}: must be {_describe(tp)}")
    raise SettingsError(f"{name} is a group of settings; set {name}.FIELD=VALUE")


def parse_value(cls, key: str, text: str):
    """Parse command-line ``text`` for the (possibly dotted) ``key`` of settings class ``cls``."""
    head, _, rest = key.partition(".")
    hints = field_types(cls)
    if head not in hints:
        raise SettingsError(f"{cls.__name__} has no setting {head!r}{did_you_mean(head, hints)}")
    tp = _optional(hints[head])[0]
    group = isinstance(tp, type) and issubclass(tp, Settings)
    if rest:
        if not group:
            raise SettingsError(f"{head} is not a group of settings; set {head}=VALUE")
        return parse_value(tp, rest, text)
    if group:
        if "enabled" in field_types(tp):
            return _parse_text(key, bool, text)
        raise SettingsError(f"{key} is a group of settings; set {key}.FIELD=VALUE "
                            f"({', '.join(f.name for f in dataclasses.fields(tp))})")
    return _parse_text(key, hints[head], text)


def as_dict(obj) -> dict:
    """JSON-ready dict of a settings dataclass (nested groups as dicts, tuples as lists, objects by name)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = as_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        elif not isinstance(v, (int, float, str, bool, list, dict, type(None))):
            v = getattr(v, "name", str(v))
        out[f.name] = v
    return out
