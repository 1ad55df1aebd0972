"""bmiss: decompose HD-EMG into motor-unit spike trains by inverting a differentiable forward model.

Notebook API::

    import bmiss
    rec = bmiss.simulate("biceps_brachii", duration_s=20, snr_db=20, seed=0)
    dec = bmiss.decompose(rec, method="bmiss")
    report = bmiss.evaluate(dec, rec)
    bmiss.export(dec, "units.csv")

The functions are loaded on first use (``import bmiss`` imports neither JAX nor NumPy), so that
``bmiss --help`` is fast and the command line can install its Ctrl-C handling before JAX loads.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> "module:attribute" (loaded by __getattr__ on first use)
_LAZY = {
    "simulate": "bmiss.api:simulate",
    "decompose": "bmiss.api:decompose",
    "evaluate": "bmiss.api:evaluate",
    "export": "bmiss.api:export",
    "fit": "bmiss.api:fit",  # the function; the subject-fit code is the package bmiss.fitting
    "load_recording": "bmiss.api:load_recording",
    "load_decomposition": "bmiss.api:load_decomposition",
    "save_recording": "bmiss.api:save_recording",
    "save_decomposition": "bmiss.api:save_decomposition",
    # reference decompositions (bmiss.reference, from the readers' work; absent -> AttributeError)
    "compare_reference": "bmiss.reference:compare",
    "load_reference": "bmiss.reference:load_reference",
    "batch": "bmiss.batch:batch",  # many recordings as Dask tasks (bmiss.batch)
}

__all__ = ["simulate", "decompose", "evaluate", "export", "fit", "load_recording", "save_recording",
           "load_decomposition", "save_decomposition", "batch"]


# API functions that share their name with a submodule (bmiss/simulate.py)
_FUNCTION_NAMES = {"simulate", "batch"}


class _Package(types.ModuleType):
    """``bmiss``: importing the submodule ``bmiss.simulate`` must not rebind the function ``bmiss.simulate``
    (the import system sets the package attribute; the submodule stays in ``sys.modules``)."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _FUNCTION_NAMES:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'bmiss' has no attribute {name!r}")
    mod, attr = target.split(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod:
            raise
        raise AttributeError(f"module 'bmiss' has no attribute {name!r} ({mod} is not installed)") from None
    value = getattr(module, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
