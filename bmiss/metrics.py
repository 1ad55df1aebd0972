"""Accuracy against ground truth and blind quality of motor-unit spike trains.

Everything here is plain numpy/scipy and runs once per evaluation, never in a hot loop.

Conventions
-----------
* Spike trains are integer sample-index arrays (0-based), one array per unit.
* ``fs`` is the sampling rate in Hz.

Rate of agreement (ground truth)
--------------------------------
``RoA = TP / (TP + FP + FN)`` (SCD, MUniverse).  Before counting, the estimated train is
shifted by the integer lag (within ``±max_lag_ms``) that maximises the number of matches,
then estimated and true spikes are paired ONE-TO-ONE within ``±tol`` samples, where::

    tol = max(1, floor(tol_ms * fs / 1000 + 0.5))     # round half up, at least 1 sample

so at 2048 Hz the default 0.5 ms gives ``tol = 1``: a spike 1 sample off counts, 2 samples
off does not.  openhdemg 0.2 reports the Dice score ``2TP / (2TP + FP + FN)`` under the same
name; ``kind="dice"`` gives it.  The two are never mixed: every result says which ``kind``
its ``roa`` value is, and :func:`match_units` thresholds (0.9 / 0.8 / 0.3 / ...) apply to
whichever kind was asked for.

Blind quality (no ground truth)
-------------------------------
``sil``, ``pnr``, ``cov_isi``, ``discharge_rate`` are defined once, in :mod:`bmiss.quality`
(re-exported here); the decomposers report the same numbers.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from .quality import cov_isi, discharge_rate, ms_to_samples, pnr, sil, tol_samples  # noqa: F401 (re-exported)

__all__ = [
    "tol_samples",
    "rate_of_agreement",
    "match_units",
    "sil",
    "pnr",
    "cov_isi",
    "discharge_rate",
    "unit_quality",
    "property_errors",
    "evaluate",
    "format_report",
]


# ---------------------------------------------------------------------------- RoA
def _as_spikes(x) -> np.ndarray:
    a = np.asarray(x if x is not None else [], dtype=np.int64).ravel()
    return np.unique(a)  # sorted, duplicates removed


def _pair_differences(est: np.ndarray, true: np.ndarray, w: int) -> np.ndarray:
    """All ``true[j] - est[i]`` with ``|true[j] - est[i]| <= w`` (both sorted)."""
    lo = np.searchsorted(true, est - w, side="left")
    hi = np.searchsorted(true, est + w, side="right")
    counts = hi - lo
    n = int(counts.sum())
    if n == 0:
        return np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(est)), counts)
    # position inside each est's run: 0..counts-1
    start = np.repeat(np.cumsum(counts) - counts, counts)
    j = np.repeat(lo, counts) + (np.arange(n) - start)
    return true[j] - est[owner]


def _best_lag(est: np.ndarray, true: np.ndarray, max_lag: int, tol: int) -> int:
    """Lag (added to ``est``) that maximises the number of spikes within ``±tol``.

    Score = number of pairwise differences inside the window ``[lag - tol, lag + tol]``;
    ties are broken by the number of exact coincidences, then by the smallest ``|lag|``.
    """
    if len(est) == 0 or len(true) == 0 or max_lag <= 0:
        return 0
    d = _pair_differences(est, true, max_lag + tol)
    if len(d) == 0:
        return 0
    span = max_lag + tol
    hist = np.bincount(d + span, minlength=2 * span + 1)
    window = np.convolve(hist, np.ones(2 * tol + 1, np.int64), mode="same")
    lags = np.arange(-max_lag, max_lag + 1)
    idx = lags + span
    win, exact = window[idx], hist[idx]
    # lexicographic: window count, exact count, -|lag|
    order = np.lexsort((np.abs(lags), -exact, -win))
    return int(lags[order[0]])


def match_flags(est: np.ndarray, true: np.ndarray, tol: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-pointer one-to-one matching of sorted spike trains within ±tol (optimal for intervals
    of equal width on a line): (est matched? [n_est] bool, true matched? [n_true] bool)."""
    em = np.zeros(len(est), bool)
    tm = np.zeros(len(true), bool)
    i = j = 0
    while i < len(est) and j < len(true):
        d = int(est[i]) - int(true[j])
        if d < -tol:
            i += 1
        elif d > tol:
            j += 1
        else:
            em[i] = tm[j] = True
            i += 1
            j += 1
    return em, tm


def _count_matches(est: np.ndarray, true: np.ndarray, tol: int) -> int:
    """Maximum one-to-one matching of sorted spike times within ``±tol``.

    Fast path when no spike has two candidates (the usual case: a motor unit does not
    fire twice within a few samples); otherwise the two-pointer sweep, which is optimal
    for intervals of equal width on a line.
    """
    if len(est) == 0 or len(true) == 0:
        return 0
    lo = np.searchsorted(true, est - tol, side="left")
    hi = np.searchsorted(true, est + tol, side="right")
    cand = hi - lo
    if cand.max(initial=0) <= 1:
        t_idx = lo[cand == 1]
        if len(np.unique(t_idx)) == len(t_idx):
            return int(len(t_idx))
    return int(match_flags(est, true, tol)[0].sum())


def _score(tp: int, fp: int, fn: int, kind: str) -> float:
    if kind == "roa":
        den = tp + fp + fn
        return tp / den if den else 0.0
    if kind == "dice":
        den = 2 * tp + fp + fn
        return 2 * tp / den if den else 0.0
    raise ValueError(f"kind must be 'roa' or 'dice', got {kind!r}")


def rate_of_agreement(est, true, fs: float, *, tol_ms: float = 0.5, max_lag_ms: float = 30.0,
                      kind: str = "roa") -> dict:
    """Agreement between an estimated and a true spike train.

    Parameters
    ----------
    est, true : int sample indices (duplicates are dropped, order does not matter).
    fs : sampling rate, Hz.
    tol_ms : matching tolerance; ``tol = max(1, round_half_up(tol_ms*fs/1000))`` samples
        (0.5 ms at 2048 Hz -> 1 sample: 1 sample off matches, 2 samples off does not).
    max_lag_ms : the estimated train is shifted by the integer lag in
        ``±round_half_up(max_lag_ms*fs/1000)`` samples that maximises the matches.
    kind : ``"roa"`` -> TP/(TP+FP+FN) (default, SCD/MUniverse);
        ``"dice"`` -> 2TP/(2TP+FP+FN) (what openhdemg 0.2 calls RoA).  Dice is always
        >= RoA for the same counts; never compare numbers of different kinds.

    Returns
    -------
    dict with ``roa`` (score of the requested ``kind``), ``kind``, ``tp``, ``fp``, ``fn``,
    ``lag`` (samples ADDED to the estimated train: ``est + lag ≈ true``) and ``tol``.
    The lag maximises the number of spikes within ``±tol`` (ties: most exact coincidences,
    then smallest ``|lag|``), so a shift of the whole train by less than ``tol`` is free and
    a single spike's offset is judged relative to that best shift.
    Spikes are matched one-to-one: two estimated spikes around one true spike give
    1 TP + 1 FP.  Two empty trains give ``roa = 0``.
    """
    e, t = _as_spikes(est), _as_spikes(true)
    tol = tol_samples(tol_ms, fs)
    max_lag = max(0, ms_to_samples(max_lag_ms, fs))
    lag = _best_lag(e, t, max_lag, tol)
    tp = _count_matches(e + lag, t, tol)
    fp, fn = len(e) - tp, len(t) - tp
    return {"roa": float(_score(tp, fp, fn, kind)), "kind": kind, "tp": int(tp), "fp": int(fp),
            "fn": int(fn), "lag": int(lag), "tol": int(tol)}


# ---------------------------------------------------------------------------- matching
def match_units(est_spikes: Sequence, true_spikes: Sequence, fs: float, *, match_min: float = 0.3,
                false_max: float = 0.3, **roa_kw) -> dict:
    """Match estimated units to true units one-to-one (Hungarian on the RoA matrix).

    Definitions (thresholds apply to the score ``kind`` in ``roa_kw``, default RoA):

    * ``roa``        matrix [n_true, n_est] from :func:`rate_of_agreement` (each pair with its
      own best lag).
    * matched pair   a Hungarian pair (``linear_sum_assignment`` maximising the total RoA)
      with RoA >= ``match_min`` (0.3).  Every true MU has at most one estimate and vice versa.
    * ``found_90`` / ``found_80``  true MUs whose matched RoA is >= 0.9 / >= 0.8.
    * ``false_units``  estimates whose best RoA against ANY true MU is < ``false_max`` (0.3).
    * ``duplicates``   estimates that are not matched but reach RoA >= ``false_max`` with some
      true MU (their best one, almost always already matched to a better estimate).
      Each estimate is exactly one of matched / false / duplicate.

    Returns a dict: ``roa`` (list of lists), ``per_true`` (list of dicts: true, est (-1 if
    unmatched), roa, lag, tp, fp, fn, best_roa), ``n_true``, ``n_est``, ``n_matched``,
    ``found_90``, ``found_80``, ``matched_pairs`` [(true, est, roa)], ``false_units`` [est],
    ``duplicates`` [(est, true, roa)], ``found_90_units``/``found_80_units`` [true], ``kind``.
    """
    from scipy.optimize import linear_sum_assignment

    n_true, n_est = len(true_spikes), len(est_spikes)
    kind = roa_kw.get("kind", "roa")
    true_sorted = [_as_spikes(t) for t in true_spikes]
    est_sorted = [_as_spikes(e) for e in est_spikes]
    R = np.zeros((n_true, n_est))
    detail: dict[tuple[int, int], dict] = {}
    for i in range(n_true):
        for j in range(n_est):
            r = rate_of_agreement(est_sorted[j], true_sorted[i], fs, **roa_kw)
            R[i, j] = r["roa"]
            detail[i, j] = r
    assign = {}
    if n_true and n_est:
        rows, cols = linear_sum_assignment(-R)
        for i, j in zip(rows, cols):
            if R[i, j] >= match_min:
                assign[int(i)] = int(j)
    matched_est = set(assign.values())
    per_true = []
    for i in range(n_true):
        best = float(R[i].max()) if n_est else 0.0
        if i in assign:
            d = detail[i, assign[i]]
            per_true.append({"true": i, "est": assign[i], "roa": d["roa"], "lag": d["lag"], "tp": d["tp"],
                             "fp": d["fp"], "fn": d["fn"], "best_roa": best})
        else:
            per_true.append({"true": i, "est": -1, "roa": 0.0, "lag": 0, "tp": 0, "fp": 0,
                             "fn": int(len(true_sorted[i])), "best_roa": best})
    false_units, duplicates = [], []
    for j in range(n_est):
        if j in matched_est:
            continue
        col = R[:, j] if n_true else np.zeros(0)
        if n_true == 0 or col.max() < false_max:
            false_units.append(j)
        else:
            i = int(col.argmax())
            duplicates.append((j, i, float(col[i])))
    f90 = [p["true"] for p in per_true if p["est"] >= 0 and p["roa"] >= 0.9]
    f80 = [p["true"] for p in per_true if p["est"] >= 0 and p["roa"] >= 0.8]
    return {
        "kind": kind,
        "roa": R.tolist(),
        "per_true": per_true,
        "n_true": n_true,
        "n_est": n_est,
        "n_matched": len(assign),
        "found_90": len(f90),
        "found_80": len(f80),
        "found_90_units": f90,
        "found_80_units": f80,
        "matched_pairs": [(i, j, float(R[i, j])) for i, j in sorted(assign.items())],
        "false_units": false_units,
        "duplicates": duplicates,
    }


# ---------------------------------------------------------------------------- blind quality
def unit_quality(source, spikes, fs: float) -> dict:
    """All blind quality numbers for one unit: n_spikes, rate_hz, cov_isi, sil, pnr_db."""
    return {
        "n_spikes": int(len(_as_spikes(spikes))),
        "rate_hz": discharge_rate(spikes, fs),
        "cov_isi": cov_isi(spikes, fs),
        "sil": sil(source, spikes, fs),
        "pnr_db": pnr(source, spikes, fs),
    }


# ---------------------------------------------------------------------------- properties
def property_errors(est_params, true_params, names: Sequence[str], bounds=None, intervals=None) -> dict:
    """Error of fitted MU properties over matched pairs (rows of both arrays correspond).

    Returns ``{name: {"mae", "rmse", "nrmse", "norm", "n"}}`` where ``nrmse = rmse / norm``
    and ``norm`` is the bound range ``hi - lo`` when ``bounds`` is given (dict name ->
    (lo, hi) or array [n_params, 2]), else the range of the true values over the pairs
    (NaN if that range is 0).  Rows with a non-finite value are skipped per property.
    ``intervals`` [n, n_params, 4] (2.5, 16, 84, 97.5 % bounds, as ``Decomposition.param_interval``)
    adds ``cover68`` / ``cover95``: the share of true values inside them, over the ``n_interval``
    rows that have both.
    """
    E = np.asarray(est_params, np.float64).reshape(-1, len(names))
    T = np.asarray(true_params, np.float64).reshape(-1, len(names))
    if E.shape != T.shape:
        raise ValueError(f"est_params {E.shape} and true_params {T.shape} differ")
    Q = None if intervals is None else np.asarray(intervals, np.float64).reshape(-1, len(names), 4)
    if Q is not None and Q.shape[0] != E.shape[0]:
        raise ValueError(f"intervals {Q.shape} and est_params {E.shape} differ")
    out = {}
    for k, name in enumerate(names):
        e, t = E[:, k], T[:, k]
        ok = np.isfinite(e) & np.isfinite(t)
        cover = {}
        if Q is not None:
            q, tt = Q[:, k], T[:, k]
            has = np.isfinite(q).all(1) & np.isfinite(tt)
            inside = lambda lo, hi: float(np.mean((tt[has] >= q[has, lo]) & (tt[has] <= q[has, hi])))  # noqa: E731
            cover = ({"cover68": inside(1, 2), "cover95": inside(0, 3)} if has.any()
                     else {"cover68": float("nan"), "cover95": float("nan")}) | {"n_interval": int(has.sum())}
        e, t = e[ok], t[ok]
        norm = float("nan")
        if bounds is not None:
            if isinstance(bounds, dict):
                b = bounds.get(name)
            else:
                b = np.asarray(bounds, np.float64)[k]
            if b is not None:
                norm = float(b[1]) - float(b[0])
        elif len(t):
            norm = float(t.max() - t.min())
        if len(e) == 0:
            out[name] = {"mae": float("nan"), "rmse": float("nan"), "nrmse": float("nan"), "norm": norm, "n": 0, **cover}
            continue
        mae = float(np.mean(np.abs(e - t)))
        rmse = float(np.sqrt(np.mean((e - t) ** 2)))
        nrmse = rmse / norm if norm and np.isfinite(norm) and norm > 0 else float("nan")
        out[name] = {"mae": mae, "rmse": rmse, "nrmse": float(nrmse), "norm": norm, "n": int(len(e)), **cover}
    return out


# ---------------------------------------------------------------------------- report
from .files import jsonable as _jsonable  # noqa: E402  (one JSON policy: bmiss.files)


def evaluate(dec, rec, *, oracle_found: Iterable[int] | None = None, bounds=None,
             match_min: float = 0.3, false_max: float = 0.3, **roa_kw) -> dict:
    """Score a :class:`~bmiss.io.Decomposition` against a simulated :class:`~bmiss.io.Recording`.

    Returns a JSON-serialisable dict (NaN -> None):

    * ``summary``: n_true, n_est, n_matched, found_90, found_80, n_false, n_duplicates,
      kind, tol (samples), mean RoA of matched pairs; ``yield_90`` and ``oracle_n`` when
      ``oracle_found`` (indices of the true MUs that are identifiable at all, e.g. by the
      true-MUAP oracle filter) is given: ``yield_90 = |found_90 ∩ oracle| / |oracle|``.
    * ``per_true``: one row per true MU (see :func:`match_units`) + its spike count.
    * ``per_est``: one row per estimate: unit, status (matched/false/duplicate), true
      (matched or best true MU), roa, and blind quality (n_spikes, rate_hz, cov_isi, sil,
      pnr_db; taken from ``dec`` when stored there, computed from ``dec.sources`` otherwise).
    * ``false_units``, ``duplicates``, ``matched_pairs``, ``roa`` (the full matrix).
    * ``property_errors`` when both ``dec.params`` and ``rec.true_params`` exist: columns
      matched by name, over matched pairs (see :func:`property_errors`).
    """
    if rec.true_spikes is None:
        raise ValueError("evaluate needs a recording with ground truth (true_spikes)")
    fs = float(rec.fs)
    m = match_units(dec.spikes, rec.true_spikes, fs, match_min=match_min, false_max=false_max, **roa_kw)
    R = np.asarray(m["roa"]).reshape(m["n_true"], m["n_est"])

    status = {}
    for i, j, _ in m["matched_pairs"]:
        status[j] = ("matched", i)
    for j in m["false_units"]:
        status[j] = ("false", int(R[:, j].argmax()) if m["n_true"] else -1)
    for j, i, _ in m["duplicates"]:
        status[j] = ("duplicate", i)

    sources = None if dec.sources is None else np.asarray(dec.sources)
    per_est = []
    for j in range(m["n_est"]):
        q = None
        if sources is not None and sources.ndim == 2 and j < sources.shape[0]:
            q = unit_quality(sources[j], dec.spikes[j], fs)
        else:
            q = {"n_spikes": int(len(_as_spikes(dec.spikes[j]))), "rate_hz": discharge_rate(dec.spikes[j], fs),
                 "cov_isi": cov_isi(dec.spikes[j]), "sil": float("nan"), "pnr_db": float("nan")}
        for key in ("sil", "pnr_db", "cov_isi"):  # stored values win (computed by the method)
            v = getattr(dec, key, None)
            if v is not None and j < len(v) and np.isfinite(v[j]):
                q[key] = float(v[j])
        st, i = status[j]
        per_est.append({"unit": j, "status": st, "true": i,
                        "roa": float(R[i, j]) if i >= 0 else 0.0, **q})

    per_true = [dict(p, n_spikes=int(len(_as_spikes(rec.true_spikes[p["true"]])))) for p in m["per_true"]]
    matched_roa = [r for _, _, r in m["matched_pairs"]]
    summary = {
        "kind": m["kind"],
        "tol": tol_samples(roa_kw.get("tol_ms", 0.5), fs),
        "n_true": m["n_true"],
        "n_est": m["n_est"],
        "n_matched": m["n_matched"],
        "found_90": m["found_90"],
        "found_80": m["found_80"],
        "n_false": len(m["false_units"]),
        "n_duplicates": len(m["duplicates"]),
        "mean_matched_roa": float(np.mean(matched_roa)) if matched_roa else float("nan"),
    }
    if oracle_found is not None:
        oracle = {int(i) for i in oracle_found}
        hit = oracle & set(m["found_90_units"])
        summary["oracle_n"] = len(oracle)
        summary["found_90_in_oracle"] = len(hit)
        summary["yield_90"] = len(hit) / len(oracle) if oracle else float("nan")
    report = {
        "method": getattr(dec, "method", None),
        "fs": fs,
        "summary": summary,
        "per_true": per_true,
        "per_est": per_est,
        "matched_pairs": m["matched_pairs"],
        "false_units": m["false_units"],
        "duplicates": m["duplicates"],
        "found_90_units": m["found_90_units"],
        "found_80_units": m["found_80_units"],
        "roa": m["roa"],
    }
    if (getattr(dec, "params", None) is not None and rec.true_params is not None
            and dec.param_names is not None and rec.param_names is not None and m["matched_pairs"]):
        names = [n for n in rec.param_names if n in dec.param_names]
        if names:
            ti = [list(rec.param_names).index(n) for n in names]
            ei = [list(dec.param_names).index(n) for n in names]
            pairs = m["matched_pairs"]
            T = np.asarray(rec.true_params, np.float64)[[i for i, _, _ in pairs]][:, ti]
            E = np.asarray(dec.params, np.float64)[[j for _, j, _ in pairs]][:, ei]
            iv = getattr(dec, "param_interval", None)
            Q = None if iv is None else np.asarray(iv, np.float64)[[j for _, j, _ in pairs]][:, ei]
            report["property_errors"] = property_errors(E, T, names, bounds=bounds, intervals=Q)
    return _jsonable(report)


def _f(v, fmt="{:.3f}", none="-"):
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def format_report(report: dict) -> str:
    """Readable plain-text rendering of :func:`evaluate`'s report."""
    s = report["summary"]
    kind = "RoA" if s.get("kind", "roa") == "roa" else "Dice"
    lines = [f"method: {report.get('method')}   fs: {report.get('fs')} Hz   score: {kind} "
             f"(tol ±{s.get('tol')} samples)",
             f"true MUs: {s['n_true']}   estimates: {s['n_est']}   matched: {s['n_matched']}   "
             f"found >=0.9: {s['found_90']}   >=0.8: {s['found_80']}   "
             f"false: {s['n_false']}   duplicates: {s['n_duplicates']}   "
             f"mean matched {kind}: {_f(s.get('mean_matched_roa'))}"]
    if "yield_90" in s:
        lines.append(f"oracle-identifiable: {s['oracle_n']}   found >=0.9 among them: "
                     f"{s['found_90_in_oracle']}   yield: {_f(s['yield_90'])}")
    lines += ["", "per true MU", f"{'true':>5} {'est':>5} {kind:>6} {'lag':>5} {'tp':>6} {'fp':>6} {'fn':>6} "
              f"{'best':>6} {'n':>6}"]
    for p in report["per_true"]:
        lines.append(f"{p['true']:>5} {p['est']:>5} {_f(p['roa']):>6} {p['lag']:>5} {p['tp']:>6} {p['fp']:>6} "
                     f"{p['fn']:>6} {_f(p['best_roa']):>6} {p.get('n_spikes', ''):>6}")
    lines += ["", "per estimated unit",
              f"{'unit':>5} {'status':>9} {'true':>5} {kind:>6} {'n':>6} {'rate':>7} {'CoV':>6} {'SIL':>6} {'PNR':>6}"]
    for q in report["per_est"]:
        lines.append(f"{q['unit']:>5} {q['status']:>9} {q['true']:>5} {_f(q['roa']):>6} {q['n_spikes']:>6} "
                     f"{_f(q['rate_hz'], '{:.1f}'):>7} {_f(q['cov_isi']):>6} {_f(q['sil']):>6} "
                     f"{_f(q['pnr_db'], '{:.1f}'):>6}")
    pe = report.get("property_errors")
    if pe:
        lines += ["", "property errors over matched pairs",
                  f"{'property':>16} {'MAE':>10} {'RMSE':>10} {'nRMSE':>8} {'n':>4}"]
        for name, d in pe.items():
            lines.append(f"{name:>16} {_f(d['mae'], '{:.4g}'):>10} {_f(d['rmse'], '{:.4g}'):>10} "
                         f"{_f(d['nrmse']):>8} {d['n']:>4}")
    return "\n".join(lines)
