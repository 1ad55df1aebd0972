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

With ``UnitFitSettings.method = "posterior"`` the amortized posterior (:mod:`bmiss.posterior`) comes
first: its mean and std for every unit inside its training domain, no unit fit for those.

A fitted unit's ``param_std`` is sqrt(Laplace std² + (k posterior std)²) where its posterior is in
the network's domain (``UnitFitSettings.std = "combined"``; k per property, ``posterior_scale``,
calibrated for 95 % coverage on simulated foreign recordings of another seed than the benchmark's;
``results/calibrate_unit_std.json``, held-out coverage in ``results/bench_unit_props_calibrated.json``).

Model check (``UnitFitSettings.check_z``): where a fitted unit's value lies more than ``check_z``
posterior std from its in-domain posterior's mean in any property, the fit's model is taken not to
represent that MUAP (e.g. fibres much shorter than the subject's) and the unit reports the
posterior's mean and std, with ``params_from`` naming the properties that disagreed.

Every unit with a usable average also gets the amortized posterior (``UnitFitSettings.posterior``):
``meta["units"][i]["posterior"]`` = mean, std, 2.5/16/84/97.5 % quantiles per property, whether
the unit lies in the network's training domain and why not. It reads each average over the whole
search window (:func:`bmiss.posterior.averages`), with x and IZ on the grid placement the caller
gives (``run_bmiss``: the fitted subject's where its model explains ``subject_fit.min_ev`` of the
blind MUAPs, else the recording's own; ``meta["posterior"]["grid_placement"]``). Its intervals
are calibrated on held-out simulations (68 % / 95 % intervals cover 64-69 % / 92-95 %); the unit fit's Laplace std
is a local width that covered 4-37 % of true values on mismatched recordings
(``results/bench_posterior.json``).

Intervals (``param_interval`` [n_units, 6, 4]: 2.5, 16, 84, 97.5 % bounds): the 95 % one is
``param`` +- 1.96 ``param_std``; the 68 % one has its own factor (``posterior_scale68``), since the
errors' heavy tails let no single width hold both levels. A unit reporting the posterior gets the
posterior's quantiles.

Output: Decomposition fields ``params``, ``param_std`` [n_units, 6] float32, ``param_interval``
and ``param_names``,
and ``meta["units"]``, ``meta["unit_fit"]``, ``meta["posterior"]``, ``meta["param_units"]``.
"""
from __future__ import annotations

import sys

import numpy as np

from ..conductor import PARAM_NAMES, PARAM_UNITS
from ..errors import FitError

__all__ = ["unit_properties", "model_check"]

STD_MEANING = {
    "combined": "unit fit: sqrt(Laplace std^2 + (k amortized posterior std)^2), k per property "
                "(unit_fit.posterior_scale, calibrated on held-out simulations), where meta['units'][i]['std_from'] says "
                "so (the posterior's spread stands for model mismatch), the Laplace std alone where it says 'laplace', "
                "the posterior's std where it says 'posterior' (the model check replaced the fit)",
    "laplace": "unit fit: the Laplace std (a local curvature width, not calibrated)",
    "other": "the amortized posterior's std where params_from says 'amortized posterior'; else std of the parameters "
             "over the starts that converged to the unit (NaN: one start)",
}


INTERVAL_MEANING = (
    "param_interval[i, p] = (2.5 %, 16 %, 84 %, 97.5 %) bounds: the 95 % and 68 % intervals. Where std_from says "
    "'laplace + posterior': param +- 1.96 param_std and param +- sqrt(Laplace std^2 + (k68 posterior std)^2) "
    "(unit_fit.posterior_scale68), each calibrated for its level on held-out simulations; 'posterior': the amortized "
    "posterior's quantiles; 'laplace': param +- 1.96 / 1 Laplace std (not calibrated); NaN: no interval")


def _symmetric(mean, half95_sd, half68):
    """[6, 4] bounds mean -+ 1.96 ``half95_sd`` and mean -+ ``half68`` (the 68 % half-width never
    wider than the 95 % one)."""
    m, h95 = np.asarray(mean, np.float64), 1.96 * np.asarray(half95_sd, np.float64)
    h68 = np.minimum(np.asarray(half68, np.float64), h95)
    return np.stack([m - h95, m - h68, m + h68, m + h95], -1)


def _quantiles(post, j):
    """[6, 4] the posterior's 2.5, 16, 84, 97.5 % quantiles of unit ``j``."""
    return np.stack([np.asarray(post.q[k][j], np.float64) for k in ("0.025", "0.16", "0.84", "0.975")], -1)


def model_check(fit, post_mean, post_std, check_z):
    """Names of the properties (``PARAM_NAMES``) in which a unit's fit [6] lies more than ``check_z``
    posterior std from its amortized posterior's mean [6] (empty: the two agree, or no check)."""
    if check_z is None:
        return []
    z = np.abs(np.asarray(fit, np.float64) - post_mean) / np.maximum(np.asarray(post_std, np.float64), 1e-12)
    return [n for n, v in zip(PARAM_NAMES, z) if np.isfinite(v) and v > check_z]


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


def _posterior(rec, units, anatomy, settings, seed: int):
    """``(UnitPosterior or None, index of the units it covers, meta)``: the amortized posterior of
    every unit with at least ``settings.min_discharges`` usable discharges."""
    import time

    from .. import posterior
    from ..electrodes import layout_of_anatomy
    from ..errors import SurrogateMismatchError
    from ..templates import search_bounds, usable_discharges

    t = time.perf_counter()
    pre, post = search_bounds(rec.fs)
    idx = [i for i, u in enumerate(units)
           if len(usable_discharges(np.unique(u.spikes), rec.n_samples, pre, post)) >= settings.min_discharges]
    if not idx or anatomy is None:
        return None, [], {"n_units": 0, "reason": "no unit with a usable average" if anatomy is not None
                          else "no anatomy (grid) known"}
    try:
        # the whole search window, not the union of the units' supports (see posterior.averages)
        tpl = posterior.averages(rec.emg, [units[i].spikes for i in idx], rec.fs, seed=seed,
                                 min_discharges=settings.min_discharges)
        g = anatomy.grid
        tissue = {"rotation_deg": float(g.rotation_deg), "grid_centre_x_mm": float(g.centre_x_mm),
                  "grid_centre_z_mm": float(g.centre_z_mm)}  # tissue left unknown: the network integrates over it
        post_ = posterior.unit_properties(tpl, layout_of_anatomy(anatomy).positions_mm(),
                                          2 * float(g.electrode_radius_mm), tissue, seed=seed)
    except (SurrogateMismatchError, ValueError) as e:  # properties are a by-product: keep the units, say why
        return None, [], {"n_units": 0, "error": f"{type(e).__name__}: {e}"}
    return post_, idx, {"n_units": len(idx), "n_in_domain": int(np.sum(post_.in_domain)),
                        "time_s": round(time.perf_counter() - t, 2), "tissue": "unknown (integrated over)",
                        "grid_placement": {"anatomy": anatomy.name, **tissue}, "weights": "bmiss/data/posterior_v1"}


def _posterior_entry(post, j) -> dict:
    names = list(PARAM_NAMES)
    return {"mean": dict(zip(names, map(float, post.mean[j]))), "std": dict(zip(names, map(float, post.std[j]))),
            **{f"q{k}": dict(zip(names, map(float, v[j]))) for k, v in post.q.items()},
            "in_domain": bool(post.in_domain[j]), "reasons": list(post.reasons[j])}


def unit_properties(rec, units: list, subject, settings, *, seed: int = 0, progress: bool = False,
                    anatomy=None):
    """``(Decomposition fields, meta entries)`` with the properties of ``units`` (see module docstring).

    ``subject`` : :class:`~bmiss.pipeline.subject.SubjectModel` or ``None`` (``--init model``);
    ``settings`` : :class:`~bmiss.pipeline.settings.UnitFitSettings`; ``anatomy`` : the grid
    placement (rotation, centre) the amortized posterior reads x and IZ in (default the subject's).
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
    post, p_idx, p_meta = (None, [], None)
    post_anatomy = anatomy if anatomy is not None else (subject.anatomy if subject is not None else None)
    if settings.enabled and (settings.posterior or settings.method == "posterior") and units:
        post, p_idx, p_meta = _posterior(rec, units, post_anatomy, settings, seed)
    by_post = {i: j for j, i in enumerate(p_idx)}
    use_post = settings.method == "posterior" and post is not None
    need_fit = [u for i, u in enumerate(units) if not (use_post and i in by_post and post.in_domain[by_post[i]])]
    uf, uf_meta = _unit_fit(rec, need_fit, subject, settings, seed, progress)
    # the fit's IZ is along the fibres of the fitted subject (grid at its centre_z_mm); the posterior's
    # along those of the anatomy it was placed with: compared in the posterior's frame
    dz = (float(subject.anatomy.grid.centre_z_mm) - float(post_anatomy.grid.centre_z_mm)
          if uf is not None and post_anatomy is not None else 0.0)
    fit_of = {id(u): k for k, u in enumerate(need_fit)}
    std_from = [None] * len(units)
    ival = np.full((len(units), 6, 4), np.nan)
    for i, u in enumerate(units):
        k = fit_of.get(id(u))
        if uf is not None and k is not None and uf.status[k] == "fitted":
            params[i], pstd[i], src[i] = uf.params[k], uf.std[k], "unit fit under the subject model"
            std_from[i] = "laplace"
            j = by_post.get(i)
            # compared in the posterior's frame: IZ on the grid, not shifted by the subject's fitted dz
            off = (model_check(uf.params[k] - np.r_[0, 0, 0, dz, 0, 0], post.mean[j], post.std[j], settings.check_z)
                   if j is not None and post.in_domain[j] else [])
            ival[i] = _symmetric(uf.params[k], uf.std[k], uf.std[k])  # +- 1.96 / 1 Laplace std: uncalibrated
            if off:  # the fit's model does not represent this MUAP: the posterior integrates over more
                params[i], pstd[i] = post.mean[j], post.std[j]
                src[i] = f"amortized posterior (the unit fit disagreed in {', '.join(off)})"
                std_from[i], ival[i] = "posterior", _quantiles(post, j)
            elif settings.std == "combined" and j is not None and post.in_domain[j]:
                lap, ps = np.asarray(uf.std[k], np.float64), np.asarray(post.std[j], np.float64)
                pstd[i] = np.hypot(lap, np.asarray(settings.posterior_scale) * ps)
                ival[i] = _symmetric(uf.params[k], pstd[i], np.hypot(lap, np.asarray(settings.posterior_scale68) * ps))
                std_from[i] = "laplace + posterior"
        elif use_post and i in by_post and post.in_domain[by_post[i]]:
            j = by_post[i]
            params[i], pstd[i], src[i] = post.mean[j], post.std[j], "amortized posterior"
            ival[i] = _quantiles(post, j)
    extra = {"params": params.astype(np.float32), "param_std": pstd.astype(np.float32), "param_names": PARAM_NAMES,
             "param_interval": ival.astype(np.float32)}
    def fit_fields(u):
        k = fit_of.get(id(u))
        if uf is None or k is None:
            return {}
        return {"muap_explained_variance": _finite(uf.explained_variance[k]), "unit_fit": uf.status[k],
                "gain": _finite(uf.gain[k]),
                # the fit's own curvature width, before the posterior's spread joins it in param_std
                "laplace_std": dict(zip(PARAM_NAMES, map(_finite, np.asarray(uf.std[k]))))}

    meta = {"units": [{"shift_samples": u.info.get("shift_samples"), "round": u.info.get("round"),
                       "phase": u.info.get("phase"), "params_from": src[i], "std_from": std_from[i],
                       # a model-search unit found with the network: its search parameters in its domain?
                       **({"in_network_domain": u.info["in_network_domain"]} if "in_network_domain" in u.info
                          else {}),
                       **fit_fields(u),
                       **({"posterior": _posterior_entry(post, by_post[i])} if i in by_post else {}),
                       "n_starts_converged": 1 + sum("theta" in i_ for i_ in u.absorbed)}
                      for i, u in enumerate(units)],
            "param_units": dict(zip(PARAM_NAMES, PARAM_UNITS)),
            "param_std_meaning": {"fit": STD_MEANING[settings.std], "other": STD_MEANING["other"]},
            "param_interval_meaning": INTERVAL_MEANING}
    if uf_meta:
        meta["unit_fit"] = uf_meta
    if p_meta:
        meta["posterior"] = p_meta
    return extra, meta
