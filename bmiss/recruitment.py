"""Motor-neuron parameters from discharge trains: thresholds, rates, rate coding, Fuglevand pool fit.

Per unit (see :func:`unit_properties`), in the units of the reference signal ``ref``
[n_samples] (force in %MVC for a real recording, the excitation 0..1 on a simulation):

* ``rel_RT`` / ``rel_DERT``  recruitment / de-recruitment threshold: ``ref`` at the first / last
  discharge of each firing run (runs are separated by pauses longer than ``max_isi_s``); the
  median over runs that start (end) inside the recording. openhdemg reads ``ref`` at the first /
  last discharge in the same way (its ``rel_RT``, ``rel_DERT`` in %MVC).
* ``DR_rec`` / ``DR_derec``  discharge rate (pps) at recruitment / de-recruitment: mean
  instantaneous rate of the first / last ``n_firings`` ISIs of each run (openhdemg's names).
* ``DR_all_steady``  mean instantaneous rate on the plateau of ``ref`` (NaN without one).
* ``DR_all``  mean instantaneous rate over the recording.
* ``COV_isi``  ISI coefficient of variation on the plateau, else over the recording
  (:func:`bmiss.quality.cov_isi`, the project's one definition).
* ``rate_slope``  rate-coding slope, pps per ``ref`` unit: least-squares line of the
  instantaneous rate against ``ref`` at the middle of each ISI (the last two ISIs of each run left out:
  they are censored short); ``rate_at_RT`` is that line at ``rel_RT``.

Pool level (:func:`fit_pool`), the parameters of :func:`bmiss.motoneurons.make_pool`
(Fuglevand, Winter & Patla 1993) in the reference's units:

* ``recruitment_range``  max / min threshold of the units found: a LOWER bound on the pool's
  range (units above the maximal reference level, and small units the decomposition misses,
  are not observed).
* ``min_rate_hz``  median rate at recruitment.
* ``gain_hz_per_ref``  median rate-coding slope.
* ``peak_rate_first_hz``, ``peak_rate_last_hz``, ``peak_rate_spread_hz``  Fuglevand's peak
  rates fall linearly with threshold; each unit's rate line is extrapolated to
  ``ref_max_pool`` (excitation 1, or 100 %MVC), clipped to the model's form
  ``min_rate + gain (E - thr)``, and a line through (threshold, peak) evaluated at the lowest
  threshold and at ``recruitment_end`` gives the first and last unit's peak rate.

On simulations the truth is recomputed from the recording's anatomy (:func:`true_pool`,
deterministic: the pool does not depend on the seed) and :func:`compare_with_truth` reports
errors per parameter. Everything is numpy.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .files import write_text
from .quality import cov_isi  # the project's one definition

__all__ = ["UNIT_FIELDS", "reference_signal", "firing_runs", "steady_segment", "unit_properties",
           "mu_properties", "decomposition_properties", "fit_pool", "true_pool", "compare_with_truth",
           "save_mu_properties_csv", "save_mu_properties_json"]

#: Per-unit fields (openhdemg's names where it has one) and their physical unit; "ref" stands for
#: the unit of the reference signal (%MVC, or "excitation (0-1)" on simulations).
UNIT_FIELDS = {
    "n_discharges": "count", "first_discharge_s": "s", "last_discharge_s": "s", "n_runs": "count",
    "rel_RT": "ref", "rel_DERT": "ref", "DR_rec": "pps", "DR_derec": "pps", "DR_all_steady": "pps",
    "DR_all": "pps", "COV_isi": "ratio", "rate_slope": "pps/ref", "rate_at_RT": "pps",
}


def reference_signal(rec) -> tuple[np.ndarray | None, str]:
    """The recording's reference (``ref_signal`` when present, else the simulated excitation) and its unit."""
    ref = getattr(rec, "ref_signal", None)
    if ref is not None:
        unit = (getattr(rec, "meta", {}) or {}).get("ref_unit") or getattr(rec, "ref_unit", None) or "%MVC"
        return np.asarray(ref, np.float64).ravel(), str(unit)
    exc = getattr(rec, "excitation", None)
    if exc is not None:
        return np.asarray(exc, np.float64).ravel(), "excitation (0-1)"
    return None, ""


def _train(s) -> np.ndarray:
    return np.unique(np.asarray(s if s is not None else [], np.int64).ravel())


def firing_runs(spikes, fs: float, *, max_isi_s: float = 0.4) -> list[np.ndarray]:
    """Split one unit's discharges into runs separated by pauses longer than ``max_isi_s`` (s)."""
    sp = _train(spikes)
    if len(sp) == 0:
        return []
    cut = np.flatnonzero(np.diff(sp) > max_isi_s * fs) + 1
    return np.split(sp, cut)


def steady_segment(ref, fs: float, *, tol: float = 0.05, min_s: float = 1.0) -> tuple[int, int] | None:
    """Longest stretch [start, stop) (samples) where ``ref`` stays within ``tol`` x its range of its
    maximum, if it lasts at least ``min_s`` seconds; None otherwise (no plateau, e.g. a sinusoid)."""
    ref = np.asarray(ref, np.float64)
    rng = float(np.nanmax(ref) - np.nanmin(ref))
    if not np.isfinite(rng) or rng <= 0:
        return (0, len(ref)) if len(ref) >= min_s * fs else None
    on = ref >= np.nanmax(ref) - tol * rng
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    starts, stops = edges[::2], edges[1::2]
    if len(starts) == 0:
        return None
    k = int(np.argmax(stops - starts))
    if stops[k] - starts[k] < min_s * fs:
        return None
    return int(starts[k]), int(stops[k])


def _nanmedian(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else float("nan")


def unit_properties(spikes, fs: float, ref=None, *, n_samples: int | None = None, n_firings: int = 4,
                    max_isi_s: float = 0.4, steady: tuple[int, int] | None = None,
                    half_isi: bool = False, min_slope_span: float = 0.2) -> dict:
    """Motor-neuron parameters of one unit (see the module docstring for each field).

    spikes: int sample indices. fs: Hz. ref: [n_samples] reference signal or None (then only the
    rate fields are computed). n_firings: ISIs averaged for DR_rec / DR_derec (openhdemg default 4).
    steady: plateau [start, stop) in samples; default :func:`steady_segment` of ``ref``.
    half_isi: read the thresholds half an ISI before the first (after the last) discharge of a
    run instead of at it. A unit recruited at a random phase of its first ISI (as the simulator
    draws it) fires on average half an ISI after the crossing; on a fast-changing reference that
    lag is a bias (a 0.5-Hz sinusoid of amplitude 0.1 moves 0.04 in one 8-Hz ISI). The default
    (False) is openhdemg's convention, the value at the discharge itself.
    min_slope_span: the rate slope is only fitted when the unit's ISIs span at least this
    fraction of the reference's range (NaN otherwise).
    """
    sp = _train(spikes)
    if ref is not None:
        ref = np.asarray(ref, np.float64).ravel()
        n_samples = len(ref) if n_samples is None else n_samples
        if len(ref) != n_samples:
            raise ValueError(f"ref has {len(ref)} samples, the recording {n_samples}: give one value per EMG sample")
        sp = sp[(sp >= 0) & (sp < len(ref))]
    nan = float("nan")
    out = {k: nan for k in UNIT_FIELDS}
    out["n_discharges"] = int(len(sp))
    out["n_runs"] = 0
    if len(sp) == 0:
        return out
    out["first_discharge_s"], out["last_discharge_s"] = sp[0] / fs, sp[-1] / fs
    runs = firing_runs(sp, fs, max_isi_s=max_isi_s)
    out["n_runs"] = len(runs)
    idr_all, t_all, fit_mask = [], [], []
    rec_rates, derec_rates, rts, derts = [], [], [], []
    end = n_samples if n_samples is not None else int(sp[-1]) + 1
    for r in runs:
        if len(r) < 2:
            continue
        rate = fs / np.diff(r).astype(np.float64)
        idr_all.append(rate)
        t_all.append((r[1:] + r[:-1]) // 2)  # mid-ISI: the ISI integrates the drive over its length
        # The last ISIs of a run are censored (a long interval that would end after the drive fell
        # below threshold never ends in a discharge), so they are biased short: the slope fit
        # leaves out the last two of every run.
        fit_mask.append(np.arange(len(rate)) < len(rate) - 2)
        k = min(n_firings, len(rate))
        # A run that starts within one ISI of the recording's start (or ends within one of its end)
        # was already (still) active there: its first (last) discharge is not a threshold.
        isi0, isi1 = r[1] - r[0], r[-1] - r[-2]
        if r[0] >= isi0:
            rec_rates.append(rate[:k].mean())
            if ref is not None:
                rts.append(ref[max(int(r[0] - isi0 // 2), 0) if half_isi else r[0]])
        if end - r[-1] > isi1:
            derec_rates.append(rate[-k:].mean())
            if ref is not None:
                derts.append(ref[min(int(r[-1] + isi1 // 2), len(ref) - 1) if half_isi else r[-1]])
    out["DR_rec"], out["DR_derec"] = _nanmedian(rec_rates), _nanmedian(derec_rates)
    out["rel_RT"], out["rel_DERT"] = _nanmedian(rts), _nanmedian(derts)
    if not idr_all:
        return out
    idr, t = np.concatenate(idr_all), np.concatenate(t_all)
    out["DR_all"] = float(idr.mean())
    if ref is not None:
        if steady is None:
            steady = steady_segment(ref, fs)
        if steady is not None:
            m = (t >= steady[0]) & (t < steady[1])
            if m.sum() >= 3:
                out["DR_all_steady"] = float(idr[m].mean())
                in_st = sp[(sp >= steady[0]) & (sp < steady[1])]
                out["COV_isi"] = float(cov_isi(in_st, fs))
        fm = np.concatenate(fit_mask)
        x, y = ref[t[fm]], idr[fm]
        # a slope needs the unit to span a fair part of the reference (units recruited near the
        # top of a contraction see too little of it to tell a slope from ISI noise)
        if len(y) >= 5 and np.ptp(x) >= min_slope_span * max(float(np.ptp(ref)), 1e-12):
            slope, icpt = np.polyfit(x, y, 1)
            out["rate_slope"] = float(slope)
            if np.isfinite(out["rel_RT"]):
                out["rate_at_RT"] = float(icpt + slope * out["rel_RT"])
    if not np.isfinite(out["COV_isi"]):
        out["COV_isi"] = float(cov_isi(sp, fs))
    return out


def mu_properties(spikes: Sequence, fs: float, ref=None, *, n_samples: int | None = None, **kw) -> list[dict]:
    """:func:`unit_properties` for every unit (one dict per unit, ``unit`` index included)."""
    st = kw.pop("steady", None)
    if ref is not None and st is None:
        st = steady_segment(np.asarray(ref, np.float64), fs)
    return [{"unit": i, **unit_properties(s, fs, ref, n_samples=n_samples, steady=st, **kw)}
            for i, s in enumerate(spikes)]


def decomposition_properties(dec, rec=None, **kw) -> dict:
    """Motor-neuron table and pool fit of a ``bmiss.io.Decomposition``, JSON-ready (small: no arrays).

    The reference is ``rec.ref_signal`` (unit ``rec.meta["ref_unit"]``, default %MVC) or, on a
    simulation, ``rec.excitation``; without one only the rate fields are filled. ``kw`` go to
    :func:`unit_properties`. Returns ``{"ref_unit", "units" (field -> unit), "mu_properties",
    "pool_fit"}``; ``pool_fit`` uses ``ref_max_pool`` = 100 for %MVC and 1 otherwise.
    """
    ref, unit = reference_signal(rec) if rec is not None else (None, "")
    n = int(rec.n_samples) if rec is not None else None
    props = mu_properties(dec.spikes, dec.fs, ref, n_samples=n, **kw)
    pool = fit_pool(props, ref_max_pool=100.0 if "%" in unit else 1.0) if ref is not None else None
    return {"ref_unit": unit, "units": {k: v.replace("ref", unit or "ref") for k, v in UNIT_FIELDS.items()},
            "mu_properties": props, "pool_fit": pool}


def fit_pool(props: Sequence[dict], *, ref_max_pool: float = 1.0, recruitment_end: float | None = None,
             min_units: int = 3) -> dict:
    """Fuglevand pool parameters from per-unit properties (see the module docstring).

    ref_max_pool: the reference value of maximal excitation (1.0 for excitation, 100 for %MVC).
    recruitment_end: threshold of the last unit of the pool (default: the largest threshold found).
    Returns a dict; values are NaN when fewer than ``min_units`` units carry the needed fields.
    """
    rt = np.array([p.get("rel_RT", np.nan) for p in props], np.float64)
    slope = np.array([p.get("rate_slope", np.nan) for p in props], np.float64)
    r_at = np.array([p.get("rate_at_RT", np.nan) for p in props], np.float64)
    dr_rec = np.array([p.get("DR_rec", np.nan) for p in props], np.float64)
    nan = float("nan")
    out = {"n_units": int(len(props)), "recruitment_range": nan, "min_rate_hz": nan, "gain_hz_per_ref": nan,
           "peak_rate_first_hz": nan, "peak_rate_last_hz": nan, "peak_rate_spread_hz": nan,
           "recruitment_min": nan, "recruitment_max": nan, "ref_max_pool": float(ref_max_pool),
           "recruitment_range_is_lower_bound": True}
    ok_rt = np.isfinite(rt) & (rt > 0)
    if ok_rt.sum() >= min_units:
        out["recruitment_min"], out["recruitment_max"] = float(rt[ok_rt].min()), float(rt[ok_rt].max())
        out["recruitment_range"] = out["recruitment_max"] / out["recruitment_min"]
    if np.isfinite(dr_rec).sum() >= min_units:
        out["min_rate_hz"] = _nanmedian(dr_rec)
    ok = np.isfinite(slope) & np.isfinite(r_at) & ok_rt & (slope > 0)
    if ok.sum() >= min_units:
        out["gain_hz_per_ref"] = _nanmedian(slope[ok])
        peak = r_at[ok] + slope[ok] * (ref_max_pool - rt[ok])  # rate line extrapolated to E = max
        lo = out["recruitment_min"]
        hi = float(recruitment_end) if recruitment_end is not None else out["recruitment_max"]
        if np.ptp(rt[ok]) > 0:
            from scipy.stats import theilslopes  # robust: one unit's noisy slope must not tilt the line

            b, a = theilslopes(peak, rt[ok])[:2]
            out["peak_rate_first_hz"] = float(a + b * lo)
            out["peak_rate_last_hz"] = float(a + b * hi)
        else:
            out["peak_rate_first_hz"] = out["peak_rate_last_hz"] = _nanmedian(peak)
        out["peak_rate_spread_hz"] = out["peak_rate_first_hz"] - out["peak_rate_last_hz"]
    return out


# ------------------------------------------------------------------ truth (simulations)
def true_pool(rec):
    """The simulated pool of a recording written by ``bmiss.simulate``: ``(motoneurons.Pool, anatomy.PoolSpec)``.

    The pool is deterministic given the anatomy's ``[pool]`` section and the number of units
    (``make_pool``; no random draw), so it is rebuilt from ``rec.meta["anatomy_toml"]``.
    Returns None for recordings without that meta (real data).
    """
    meta = getattr(rec, "meta", {}) or {}
    if not meta.get("anatomy_toml"):
        return None
    import tomllib

    from . import anatomy, motoneurons

    a = anatomy.from_dict(tomllib.loads(meta["anatomy_toml"]), source=meta.get("anatomy", "recording"))
    p = a.pool
    n = int(meta.get("n_units") or p.n_units)
    return motoneurons.make_pool(
        n, recruitment_range=p.recruitment_range, recruitment_end=p.recruitment_end, min_rate_hz=p.min_rate_hz,
        peak_rate_first_hz=p.peak_rate_first_hz, peak_rate_last_hz=p.peak_rate_last_hz,
        fibres_min=p.fibres_min, fibres_max=p.fibres_max, isi_cov=p.isi_cov), p


def compare_with_truth(props: Sequence[dict], pool_fit: dict, rec, pairs: Sequence[tuple[int, int]]) -> dict:
    """Errors of the estimated parameters against a simulation's pool.

    props: :func:`mu_properties` of the decomposition. pairs: (true_index, est_index) of matched
    units (e.g. ``metrics.match_units(...)["matched_pairs"]``). Threshold errors are reported in
    excitation units and as a fraction of the excitation range of the recording
    (max - min of ``rec.excitation``). True per-unit values: thresholds ``pool.thresholds``,
    rate at recruitment ``pool.min_rates_hz``, slope ``pool.gains`` (until the peak rate), plateau
    rate ``discharge_rates(pool, plateau excitation)``, ISI CoV ``pool.isi_cov``.
    """
    from . import motoneurons

    tp = true_pool(rec)
    if tp is None or rec.excitation is None:
        raise ValueError("compare_with_truth needs a simulated recording (anatomy meta and excitation)")
    pool, spec = tp
    exc = np.asarray(rec.excitation, np.float64)
    rng = float(exc.max() - exc.min())
    fs = float(rec.fs)
    st = steady_segment(exc, fs)
    thr = np.asarray(pool.thresholds, np.float64)
    rows = []
    for ti, ei in pairs:
        p = props[ei]
        t_thr = float(thr[ti])
        row = {"true": int(ti), "est": int(ei), "true_RT": t_thr, "est_RT": p["rel_RT"], "est_DERT": p["rel_DERT"],
               "true_DR_rec": float(pool.min_rates_hz[ti]), "est_DR_rec": p["DR_rec"],
               "true_slope": float(pool.gains[ti]), "est_slope": p["rate_slope"],
               "true_COV_isi": float(pool.isi_cov), "est_COV_isi": p["COV_isi"], "est_DR_all_steady": p["DR_all_steady"]}
        if st is not None:
            level = float(np.median(exc[st[0]:st[1]]))
            row["true_DR_all_steady"] = float(np.asarray(motoneurons.discharge_rates(pool, level))[ti])
        rows.append(row)

    def err(a, b):
        a, b = np.array([r.get(a, np.nan) for r in rows], np.float64), np.array([r.get(b, np.nan) for r in rows])
        d = a - b
        return d[np.isfinite(d)]

    def stats(d, scale=1.0):
        if len(d) == 0:
            return {"n": 0, "mae": None, "median_ae": None, "rmse": None, "bias": None}
        return {"n": int(len(d)), "mae": float(np.mean(np.abs(d)) / scale),
                "median_ae": float(np.median(np.abs(d)) / scale), "rmse": float(np.sqrt(np.mean(d**2)) / scale),
                "bias": float(np.mean(d) / scale)}

    errs = {
        "RT_excitation": stats(err("est_RT", "true_RT")),
        "RT_fraction_of_range": stats(err("est_RT", "true_RT"), rng),
        "DERT_fraction_of_range": stats(err("est_DERT", "true_RT"), rng),
        "DR_rec_hz": stats(err("est_DR_rec", "true_DR_rec")),
        "DR_all_steady_hz": stats(err("est_DR_all_steady", "true_DR_all_steady")),
        "rate_slope_relative": stats(err("est_slope", "true_slope") / np.maximum(
            np.array([r["true_slope"] for r in rows if np.isfinite(r["est_slope"] - r["true_slope"])]), 1e-9))
        if rows else stats(np.zeros(0)),
        "COV_isi": stats(err("est_COV_isi", "true_COV_isi")),
    }
    truth_pool = {"recruitment_range": float(spec.recruitment_range), "recruitment_end": float(spec.recruitment_end),
                  "min_rate_hz": float(spec.min_rate_hz), "peak_rate_first_hz": float(spec.peak_rate_first_hz),
                  "peak_rate_last_hz": float(spec.peak_rate_last_hz),
                  "peak_rate_spread_hz": float(spec.peak_rate_first_hz - spec.peak_rate_last_hz),
                  "gain_hz_per_ref_of_found": float(np.median([pool.gains[t] for t, _ in pairs])) if pairs else None,
                  "recruitment_range_of_found": float(max(thr[t] for t, _ in pairs) / min(thr[t] for t, _ in pairs))
                  if pairs else None}
    pool_err = {k: (pool_fit.get(k, np.nan) - truth_pool[k]) for k in
                ("min_rate_hz", "peak_rate_first_hz", "peak_rate_last_hz", "peak_rate_spread_hz")}
    pool_err["recruitment_range_vs_found"] = (pool_fit.get("recruitment_range", np.nan)
                                              - (truth_pool["recruitment_range_of_found"] or np.nan))
    pool_err["gain_vs_found"] = pool_fit.get("gain_hz_per_ref", np.nan) - (truth_pool["gain_hz_per_ref_of_found"] or np.nan)
    return {"excitation_range": rng, "per_unit": rows, "errors": errs, "pool_truth": truth_pool,
            "pool_fit": pool_fit, "pool_errors": {k: (None if not np.isfinite(v) else float(v)) for k, v in pool_err.items()}}


# ------------------------------------------------------------------ writers
def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "" if not math.isfinite(v) else f"{v:.6g}"


def save_mu_properties_csv(path, props: Sequence[dict], *, ref_unit: str = "", extra: dict | None = None,
                           force: bool = False) -> Path:
    """Per-unit table as CSV: header row of field names (openhdemg's where it has one), then a
    ``# units`` row (``ref`` replaced by ``ref_unit``), then one row per unit. ``extra``: more
    columns {name: (unit, [values per unit])}, e.g. SIL/PNR from the decomposition.
    Read with ``pandas.read_csv(path, comment="#")``."""
    fields = ["unit"] + list(UNIT_FIELDS)
    units = [""] + [u.replace("ref", ref_unit or "ref") for u in UNIT_FIELDS.values()]
    extra = extra or {}
    for name, (u, vals) in extra.items():
        if len(vals) != len(props):
            raise ValueError(f"extra column {name!r} has {len(vals)} values for {len(props)} units")
        fields.append(name)
        units.append(u)
    lines = [",".join(fields), "# units," + ",".join(units[1:])]
    for i, p in enumerate(props):
        vals = [_fmt(p.get(f, i if f == "unit" else None)) for f in fields[: 1 + len(UNIT_FIELDS)]]
        vals += [_fmt(v[i]) for _, v in extra.values()]
        lines.append(",".join(vals))
    text = "\n".join(lines) + "\n"
    return write_text(path, text, force=force)


def save_mu_properties_json(path, props: Sequence[dict], pool_fit: dict | None = None, *, ref_unit: str = "",
                            force: bool = False) -> Path:
    """Per-unit table and pool fit as JSON with a ``units`` field (NaN written as null)."""
    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (float, np.floating)):
            return None if not math.isfinite(float(o)) else float(o)
        return o

    doc = {"units": {k: v.replace("ref", ref_unit or "ref") for k, v in UNIT_FIELDS.items()},
           "ref_unit": ref_unit, "mu_properties": clean(list(props))}
    if pool_fit is not None:
        doc["pool_fit"] = clean(pool_fit)
        doc["pool_units"] = {"recruitment_range": "ratio", "min_rate_hz": "pps", "gain_hz_per_ref": f"pps/{ref_unit or 'ref'}",
                             "peak_rate_first_hz": "pps", "peak_rate_last_hz": "pps", "peak_rate_spread_hz": "pps",
                             "recruitment_min": ref_unit, "recruitment_max": ref_unit}
    text = json.dumps(doc, indent=1)
    return write_text(path, text, force=force)
