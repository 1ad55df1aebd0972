"""What the browser draws, decimated on the server (JSON-ready dicts).

A long source is never sent whole: :func:`envelope` reduces the visible stretch to one (min, max)
pair per pixel column, and the browser asks again for the stretch it shows when zoomed (down to
the raw samples once there are fewer than two per pixel).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["envelope", "unit_view", "muap_view", "overview", "state"]


def _r(a, nd: int = 4) -> list:
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a), np.round(a, nd), np.nan).tolist()


def envelope(x, t0: int, t1: int, px: int) -> dict:
    """``x[t0:t1]`` for a plot ``px`` pixels wide.

    Returns ``{"kind": "raw", "t0", "step": 1, "y"}`` when there are at most ``2 px`` samples,
    else ``{"kind": "minmax", "t0", "step", "lo", "hi"}``: the min and max of each bucket of
    ``step`` samples (the last bucket may be shorter), so every peak stays visible.

    Examples
    --------
    >>> envelope(np.arange(10.0), 0, 10, 2)["hi"]
    [4.0, 9.0]
    """
    x = np.asarray(x)
    n_all = len(x)
    t0 = int(min(max(0, t0), n_all))
    t1 = int(min(max(t0, t1), n_all))
    px = max(1, int(px))
    n = t1 - t0
    if n <= 2 * px:
        return {"kind": "raw", "t0": t0, "step": 1, "y": _r(x[t0:t1])}
    step = int(math.ceil(n / px))
    nb = n // step
    seg = x[t0:t0 + nb * step].reshape(nb, step)
    lo, hi = seg.min(axis=1), seg.max(axis=1)
    if nb * step < n:
        rest = x[t0 + nb * step:t1]
        lo, hi = np.append(lo, rest.min()), np.append(hi, rest.max())
    return {"kind": "minmax", "t0": t0, "step": step, "lo": _r(lo), "hi": _r(hi)}


def unit_view(rv, i: int, t0: int | None = None, t1: int | None = None, px: int = 1200) -> dict:
    """Unit ``i`` of a :class:`~bmiss.review.edits.Review` for the plots: its source over
    ``t0..t1`` (decimated), discharges there with their source values, the instantaneous rate
    of every discharge, the rate outliers, quality, MU properties and duplicates."""
    u = rv._unit(i)
    N = rv.n_samples
    t0 = 0 if t0 is None else int(t0)
    t1 = N if t1 is None else int(t1)
    sp = u.spikes
    vis = sp[(sp >= t0) & (sp < t1)]
    rate_t = sp[1:]
    rate_hz = rv.fs / np.diff(sp) if len(sp) > 1 else np.zeros(0)
    params = []
    names = rv.dec.param_names or ()
    if u.params is not None:
        for k, name in enumerate(names):
            v = float(u.params[k]) if k < len(u.params) else float("nan")
            s = float(u.param_std[k]) if u.param_std is not None and k < len(u.param_std) else float("nan")
            ok = math.isfinite(v) and math.isfinite(s)
            ci = [v - 1.96 * s, v + 1.96 * s] if ok else None
            if u.param_interval is not None and k < len(u.param_interval):
                q = [float(x) for x in u.param_interval[k]]  # the calibrated bounds where the file has them
                ci = [q[0], q[3]] if math.isfinite(q[0]) and math.isfinite(q[3]) else ci
            params.append({"name": name, "value": v, "std": s, "ci95": ci})
    return {
        "unit": int(i), "origin": u.origin, "flagged": u.flagged, "edited": u.edited,
        "n_samples": N, "fs": rv.fs, "t0": t0, "t1": t1,
        "source": envelope(u.source, t0, t1, px),
        "spikes": vis.tolist(), "heights": _r(u.source[vis]),
        "rate_t": rate_t.tolist(), "rate_hz": _r(rate_hz, 3),
        "outliers": rv.rate_outliers(i).tolist(),
        "quality": rv.quality(i), "duplicates": rv.duplicates(i), "params": params,
        "params_stale": bool(u.edited and u.params is not None),
    }


def _channel_map(rec) -> tuple[np.ndarray, tuple[int, int]]:
    """(row, col) of each channel and the grid shape: the recording's layout, else a near-square
    row-major grid."""
    if rec.channel_map is not None:
        cm = np.asarray(rec.channel_map, np.int64)
        shape = tuple(rec.grid_shape) if rec.grid_shape is not None else (int(cm[:, 0].max()) + 1,
                                                                             int(cm[:, 1].max()) + 1)
        return cm, (int(shape[0]), int(shape[1]))
    n = rec.n_channels
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    return np.stack(np.unravel_index(np.arange(n), (rows, cols)), 1), (rows, cols)


def muap_view(rv, i: int) -> dict:
    """Unit ``i``'s MUAP on the electrode grid (µV, ms), or ``{"muap": None}``."""
    m = rv.muap(i)
    cm, shape = _channel_map(rv.rec)
    if m is None:
        return {"unit": int(i), "muap": None, "channel_map": cm.tolist(), "grid": list(shape)}
    return {"unit": int(i), "muap": _r(m["muap"], 2), "t_ms": _r(m["t_ms"], 3), "n": m["n"],
            "channel_map": cm.tolist(), "grid": list(shape), "ptp_uv": float(np.ptp(m["muap"], axis=1).max())}


def overview(rv, px: int = 1200) -> dict:
    """All units as a raster: for each unit the pixel columns (of ``px`` over the recording)
    holding at least one discharge."""
    N = rv.n_samples
    px = max(1, int(px))
    rows = []
    for u in rv.units:
        cols = np.unique((u.spikes * px) // max(N, 1)).astype(np.int64)
        rows.append(cols.tolist())
    return {"px": px, "n_samples": N, "fs": rv.fs, "rows": rows}


def state(rv) -> dict:
    """The grid-wide table (quality, flags, duplicates of every unit) and the session state."""
    return {"n_units": rv.n_units, "n_samples": rv.n_samples, "fs": rv.fs, "units": rv.summary(),
            "can_undo": rv.can_undo, "can_redo": rv.can_redo, "dirty": rv.dirty, "n_log": len(rv.log),
            "last": rv.log[-1] if rv.log else None, "method": rv.dec.method,
            "n_channels": None if rv.rec is None else rv.rec.n_channels}
