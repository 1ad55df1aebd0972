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
import os
import sys
import types

__version__ = "0.1.0"

# public name -> "module:attribute" (loaded by __getattr__ on first use)
_LAZY = {
    "simulate": "bmiss.api:simulate",
    "decompose": "bmiss.api:decompose",
    "evaluate": "bmiss.api:evaluate",
    "export": "bmiss.api:export",
    "load_recording": "bmiss.api:load_recording",
    "load_decomposition": "bmiss.api:load_decomposition",
    "save_recording": "bmiss.api:save_recording",
    "save_decomposition": "bmiss.api:save_decomposition",
}

__all__ = ["simulate", "decompose", "evaluate", "export", "fit", "load_recording", "save_recording",
           "load_decomposition", "save_decomposition"]


def _fit_is_a_package() -> bool:
    """True once the subject fit lives in :mod:`bmiss.fitting` (then ``bmiss.fit`` is the API function);
    while it is the module ``bmiss/fit.py``, ``bmiss.fit`` stays that module (``from bmiss import fit``)."""
    return os.path.isdir(os.path.join(os.path.dirname(__file__), "fitting"))


def _function_names() -> set:
    """Package attributes that are API functions although a submodule has the same name."""
    return {"simulate", "fit"} if _fit_is_a_package() else {"simulate"}


class _Package(types.ModuleType):
    """``bmiss``: importing the submodule ``bmiss.simulate`` must not rebind the function ``bmiss.simulate``
    (the import system sets the package attribute; the submodule stays in ``sys.modules``)."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _function_names():
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name == "fit":
        if _fit_is_a_package():
            return importlib.import_module("bmiss.api").fit
        return importlib.import_module("bmiss.fit")
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'bmiss' has no attribute {name!r}")
    mod, attr = target.split(":")
    value = getattr(importlib.import_module(mod), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
