"""One home for user-caused errors.

Every error a user can cause (a bad file, a bad setting, an impossible fit) derives from
:class:`BmissError`; the command line prints such an error as one line and exits 2, and treats
anything else as a bug (traceback, exit 1). :class:`BmissError` derives from ``ValueError`` so
that code catching ``ValueError`` keeps working.

This module imports nothing from bmiss, so every module can import it.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class BmissError(ValueError):
    """Base of every error caused by the user's input, files or settings."""


class BmissFileError(BmissError):
    """A file could not be read or does not hold what bmiss needs."""


class SettingsError(BmissError):
    """A setting is unknown, of the wrong type or out of range."""


class AnatomyError(BmissError):
    """An anatomy TOML (or a name) is unknown or invalid."""


class LayoutError(BmissFileError):
    """An electrode layout (grid code, channel map) is unknown or contradicts the EMG."""


class GeometryError(LayoutError):
    """A model-based method was given no usable electrode geometry."""


class RecordingMismatchError(BmissFileError):
    """A decomposition is paired with a recording it was not made from."""


class FitError(BmissError):
    """A subject or unit fit cannot run on this input (too few units, bad --fix, ...)."""


class SurrogateMismatchError(BmissError):
    """A trained network is asked for an anatomy, grid or input outside its domain."""


class UserError(BmissError):
    """A bad argument to an API function or a command (the message names the argument)."""


def did_you_mean(word: object, options: Iterable[str], *, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or ``''`` when none is close.

    Examples
    --------
    >>> did_you_mean("sil_treshold", ["sil_threshold", "min_spikes"])
    " (did you mean 'sil_threshold'?)"
    """
    near = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return f" (did you mean {near[0]!r}?)" if near else ""


__all__ = ["BmissError", "BmissFileError", "SettingsError", "AnatomyError", "LayoutError", "GeometryError",
           "RecordingMismatchError", "FitError", "SurrogateMismatchError", "UserError", "did_you_mean"]
