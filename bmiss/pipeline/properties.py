"""Stage ``unit_properties``: every final unit's MU properties (``PARAM_NAMES``, physical units).

Rule, per unit, first that applies:

1. ``unit fit under the subject model``: the unit's own spike-triggered MUAP fitted through the
   subject model (:func:`bmiss.fitting.fit_units`; amplitude informs size; Laplace std), when a
   subject model was fitted and ``UnitFitSettings.enabled``; units with too few discharges or a
   weak average are not fitted and fall through, with the reason in ``meta["units"][i]["unit_fit"]``;
2. ``model search``: the parameters at which the model search found the unit (std: spread over
   the starts that converged to it);
3. ``subject fit``: a blind unit's parameters from the subject fit;
4. ``none``: NaN.

Output: Decomposition fields ``params``, ``param_std`` [n_units, 6] float32 and ``param_names``,
and ``meta["units"]``, ``meta["unit_fit"]``, ``meta["param_units"]``.
"""
from __future__ import annotations

import sys

import numpy as np

from ..conductor import PARAM_NAMES, PARAM_UNITS
from ..errors import FitError

__all__ = ["unit_properties"]

STD_MEANING = ("Laplace std of the unit fit under the subject model where params_from says so; "
               "else std of the parameters over the starts that converged to the unit (NaN: one start)")


def _finite(v):
    v = float(v)
    return v if np.isfinite(v) else None


def _unit_fit(rec, units, subject, settings, seed: int, progress: bool):
    if subject is None or subject.fit is None or not settings.enabled or not units:
        return None, None
    from .. import fitting

    if progress:  # tens of seconds without a bar of their own
        print(f"[bmiss] fitting the properties of {len(units)} units to their own MUAPs ...", file=sys.stderr,
              flush=True)
    try:
        uf = fitting.fit_units(subject.fit, rec, [u.spikes for u in units], settings=settings, seed=seed)
    except FitError as e:  # properties are a by-product: keep the units, say why
        return None, {"error": f"{type(e).__name__}: {e}"}
    return uf, {"n_fitted": int(sum(x == "fitted" for x in uf.status)), "timing_s": uf.timing,
                "median_explained_variance": _finite(np.nanmedian(uf.explained_variance))
                if np.isfinite(uf.explained_variance).any() else None}


def unit_properties(rec, units: list, subject, settings, *, seed: int = 0, progress: bool = False):
    """``(Decomposition fields, meta entries)`` with the properties of ``units`` (see module docstring).

    ``subject`` : :class:`~bmiss.pipeline.subject.SubjectModel` or ``None`` (``--init model``);
    ``settings`` : :class:`~bmiss.pipeline.settings.UnitFitSettings`.
    """
    fixed = subject.unit_params if subject is not None else {}

    def theta(u):
        if "theta" in u.info:
            return np.asarray(u.info["theta"], np.float32)
        return np.asarray(fixed.get(u.cand, np.full(6, np.nan)), np.float32)

    def spread(u):
        th = [u.info["theta"]] + [i["theta"] for i in u.absorbed if "theta" in i] if "theta" in u.info else []
        return np.std(np.stack(th), 0) if len(th) > 1 else np.full(6, np.nan)

    params = np.stack([theta(u) for u in units]) if units else np.zeros((0, 6), np.float32)
    pstd = np.stack([spread(u) for u in units]) if units else np.zeros((0, 6), np.float32)
    src = ["model search" if "theta" in u.info else "subject fit" if u.cand in fixed else "none" for u in units]
    uf, uf_meta = _unit_fit(rec, units, subject, settings, seed, progress)
    if uf is not None:
        for i, ok in enumerate(np.array(uf.status) == "fitted"):
            if ok:
                params[i], pstd[i], src[i] = uf.params[i], uf.std[i], "unit fit under the subject model"
    extra = {"params": params.astype(np.float32), "param_std": pstd.astype(np.float32), "param_names": PARAM_NAMES}
    meta = {"units": [{"shift_samples": u.info.get("shift_samples"), "round": u.info.get("round"),
                       "phase": u.info.get("phase"), "params_from": src[i],
                       **({"muap_explained_variance": _finite(uf.explained_variance[i]),
                           "unit_fit": uf.status[i], "gain": _finite(uf.gain[i])} if uf is not None else {}),
                       "n_starts_converged": 1 + sum("theta" in i_ for i_ in u.absorbed)}
                      for i, u in enumerate(units)],
            "param_units": dict(zip(PARAM_NAMES, PARAM_UNITS)),
            "param_std_meaning": STD_MEANING}
    if uf_meta:
        meta["unit_fit"] = uf_meta
    return extra, meta
