"""Edit operations on a decomposition, without a browser: :class:`Review`.

A :class:`Review` is a working copy of a :class:`~bmiss.io.Decomposition` (and, for the MUAPs and
the filter update, its :class:`~bmiss.io.Recording`).  Every edit

* replaces whole units (:class:`UnitState` is immutable and its arrays are never written in
  place), so an undo step is a shallow copy of the unit list: cheap for any recording size;
* is appended to :attr:`Review.log` as ``{"time", "op", "units", "what", "rule"}``; undo and redo
  are logged too (the log is the history of the session, saved in the output's
  ``meta["review"]["log"]``).

Rules of the edits (also written into each log entry):

``delete_discharges``  the given samples, or every discharge inside a box (samples ``t0..t1``,
                       source value ``lo..hi``).
``add_discharges``     a click adds the largest local maximum of the source within ±5 ms of the
                       clicked sample; a box adds every local maximum (±2 ms) inside it; a new
                       discharge closer than the minimum distance (20 ms) to another, old or new,
                       is dropped in favour of the higher source value.
``remove_outliers``    instantaneous rate ``fs / ISI`` above ``mean + k SD`` (k = 3) of the unit's
                       rates: of the two discharges of such an interval the one with the lower
                       source value is removed (one pass).
``update``             filter = mean whitened extended sample at the discharges, at the lag
                       (within the unit's MUAP window) where that mean has most energy
                       (:func:`bmiss.pipeline.peel.sta_best_lag` on
                       :func:`bmiss.pipeline.prepare.prepare` with the decomposition's R and band),
                       unit norm; source = filter · z; discharges = 2-means on its peaks
                       (:mod:`bmiss.pipeline.spikes`), moved back by the lag onto the MUAP onset;
                       source shifted likewise and divided by its mean at the discharges
                       (MUedit's "update", on bmiss's discharge-time convention).
``merge``              unit B's discharges are added to A's, shifted by the lag that best aligns
                       them with A's (±25 ms) when the two are duplicates (share >= 30 %); of two discharges closer than the minimum
                       distance the one with the higher value of A's source stays; B is removed.
``split``              the discharges' source values in two classes (2-means, or above/below a
                       given threshold); the upper class stays, the lower becomes a new unit with
                       the same source and filter (run ``update`` on each afterwards).
``delete_unit`` / ``flag``  remove a unit / mark it for a second look (flags are saved in meta).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io import Decomposition, Recording, save_decomposition
from .. import quality as Q

__all__ = ["UnitState", "Review", "RULES"]

RULES = {
    "delete_discharges": "the given samples, or every discharge inside the box (samples t0..t1, source value lo..hi)",
    "add_discharges": "click: the largest local maximum of the source within +-5 ms; box: every local maximum "
                      "(+-2 ms) inside the box; of two discharges closer than the minimum distance the higher "
                      "source value stays",
    "remove_outliers": "instantaneous rate fs/ISI > mean + k SD of the unit's rates: the discharge of the interval "
                       "with the lower source value is removed (one pass)",
    "update": "filter = mean whitened extended sample at the discharges at the lag of largest energy (unit norm; "
              "bmiss.pipeline.peel.sta_best_lag); source = filter . z; discharges = 2-means on the source peaks "
              "(bmiss.pipeline.spikes) moved back by that lag; source / mean at the discharges",
    "merge": "B's discharges (shifted by their best lag within +-25 ms when A and B are duplicates) are added to A; of two discharges closer "
             "than the minimum distance the higher value of A's source stays; B is removed",
    "split": "source values at the discharges in two classes (2-means, or a threshold); the lower class becomes "
             "a new unit with the same source and filter",
    "delete_unit": "the unit is removed",
    "flag": "the unit is marked (meta['review']['flagged']); it is kept",
}


@dataclass(frozen=True)
class UnitState:
    """One unit of the working copy (never modified in place; edits make new ones).

    spikes : int64 [n] sorted discharge samples.  source : float32 [n_samples] (normalised so
    the discharges sit near 1).  filter : [n_ext] separation vector or None.  params /
    param_std : [n_params] MU properties or None.  param_interval : [n_params, 4] their
    2.5 / 16 / 84 / 97.5 % bounds or None.  flagged : marked for review.  origin : where
    the unit came from (``"unit 3"``, ``"split of unit 3"``, ...).  edited : its discharges
    changed in this session (fitted MU properties may be stale).
    """

    spikes: np.ndarray
    source: np.ndarray
    filter: np.ndarray | None = None
    params: np.ndarray | None = None
    param_std: np.ndarray | None = None
    param_interval: np.ndarray | None = None
    flagged: bool = False
    origin: str = ""
    edited: bool = False
    uid: int = 0  # stable id within the session (keys of the quality caches)


def _clean(sp, n: int) -> np.ndarray:
    sp = np.unique(np.asarray(sp, np.int64).ravel())
    return sp[(sp >= 0) & (sp < n)]


@dataclass
class _Step:
    units: list
    entry: dict


class Review:
    """Working copy of a decomposition with undoable edits.

    Parameters
    ----------
    dec : :class:`~bmiss.io.Decomposition`
    rec : :class:`~bmiss.io.Recording`, optional
        Needed for the MUAPs (:meth:`muap`) and :meth:`update` (whitened extended data).
    source_path : str, optional
        The input file (recorded in the output's meta).

    Examples
    --------
    >>> r = Review(dec, rec)                                   # doctest: +SKIP
    >>> r.delete_discharges(0, t0=1000, t1=3000, lo=0.0, hi=0.4)  # doctest: +SKIP
    >>> r.update(0); r.undo(); r.save("dec.edited.npz")       # doctest: +SKIP
    """

    def __init__(self, dec: Decomposition, rec: Recording | None = None, *, source_path: str | None = None):
        self.dec = dec
        self.rec = rec
        self.fs = float(dec.fs)
        src = np.asarray(dec.sources)
        if src.ndim != 2 or src.shape[0] != dec.n_units:
            raise UserError(f"the decomposition has {src.shape[0] if src.ndim == 2 else '?'} sources for "
                            f"{dec.n_units} units; cannot review it")
        self.n_samples = int(src.shape[1])
        if rec is not None and rec.n_samples != self.n_samples:
            raise UserError(f"the recording has {rec.n_samples} samples but the decomposition's sources "
                            f"{self.n_samples}")
        settings = (dec.meta or {}).get("settings") or {}
        rules = settings.get("rules") or {}
        self.min_distance_ms = float(rules.get("min_distance_ms", 20.0))
        self.dup_threshold = float(rules.get("dup_threshold", 0.3))
        self.dup_tol_ms = float(rules.get("dup_tol_ms", 0.5))
        self.dup_max_lag_ms = float(rules.get("dup_max_lag_ms", 25.0))
        self.peel_ms = float(rules.get("peel_ms", 50.0))
        band = rules.get("band", (20.0, 500.0))
        self.band = None if band is None else (float(band[0]), None if band[1] is None else float(band[1]))
        self.R = settings.get("R")
        self.channels_used = (dec.meta or {}).get("channels_used")
        self.source_path = None if source_path is None else str(source_path)
        self._next_uid = 0
        self.units: list[UnitState] = []
        n_p = None if dec.params is None else np.asarray(dec.params)
        s_p = None if dec.param_std is None else np.asarray(dec.param_std)
        i_p = None if dec.param_interval is None else np.asarray(dec.param_interval)
        F = None if dec.filters is None else np.asarray(dec.filters)
        prev = (dec.meta or {}).get("review") or {}  # an earlier review's flags carry over
        flagged = {int(k) for k in prev.get("flagged", []) if isinstance(k, (int, float))}
        for i in range(dec.n_units):
            self.units.append(self._new_unit(
                spikes=_clean(dec.spikes[i], self.n_samples), source=np.asarray(src[i], np.float32),
                filter=None if F is None or len(F) != dec.n_units else F[i],
                params=None if n_p is None or len(n_p) != dec.n_units else n_p[i],
                param_std=None if s_p is None or len(s_p) != dec.n_units else s_p[i],
                param_interval=None if i_p is None or len(i_p) != dec.n_units else i_p[i],
                origin=f"unit {i}", flagged=i in flagged))
        self.log: list[dict] = []
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []
        self._qcache: dict[int, dict] = {}
        self._pair: dict[tuple[int, int], float] = {}
        self._muap_cache: dict[int, dict] = {}
        self._prep = None
        self.warm = False  # set by warm_up()
        self._prep_lock = threading.RLock()
        self._xbp = None
        self._saved = self._key()  # unit ids at the last save (or load)

    # ------------------------------------------------------------------ basics
    @property
    def n_units(self) -> int:
        return len(self.units)

    @property
    def d(self) -> int:
        """Minimum distance between discharges, samples."""
        return Q.min_distance_samples(self.fs, self.min_distance_ms)

    def _new_unit(self, **kw) -> UnitState:
        self._next_uid += 1
        kw.setdefault("uid", self._next_uid)
        return UnitState(**kw)

    def _derive(self, u: UnitState, **kw) -> UnitState:
        """A new UnitState from ``u`` (new uid, so caches never serve stale values; with the same
        spikes and source it keeps the cached quality and MUAP)."""
        self._next_uid += 1
        v = replace(u, uid=self._next_uid, **kw)
        if "spikes" not in kw and "source" not in kw:
            for cache in (self._qcache, self._muap_cache):
                if u.uid in cache:
                    cache[v.uid] = cache[u.uid]
        return v

    def _unit(self, i) -> UnitState:
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise UserError(f"unit {i!r} is not a unit number") from None
        if not 0 <= i < self.n_units:
            raise UserError(f"unit {i}: the decomposition has units 0..{self.n_units - 1}")
        return self.units[i]

    def _commit(self, units: list[UnitState], op: str, idx: list[int], what: str) -> dict:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "op": op, "units": idx,
                 "what": what, "rule": RULES[op]}
        self._undo.append(_Step(units=list(self.units), entry=entry))
        self._redo.clear()
        self.units = units
        self.log.append(entry)
        return entry

    def _replace(self, i: int, u: UnitState, op: str, what: str) -> dict:
        units = list(self.units)
        units[i] = u
        return self._commit(units, op, [i], what)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def _key(self) -> tuple:
        return tuple(u.uid for u in self.units)

    @property
    def dirty(self) -> bool:
        """True when the units differ from the last save (or the input)."""
        return self._key() != self._saved

    def undo(self) -> dict:
        """Undo the last edit; returns the log entry of the undone edit."""
        if not self._undo:
            raise UserError("nothing to undo")
        step = self._undo.pop()
        self._redo.append(_Step(units=list(self.units), entry=step.entry))
        self.units = step.units
        self.log.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "op": "undo",
                         "units": step.entry["units"], "what": f"undo {step.entry['op']}: {step.entry['what']}",
                         "rule": "the unit list before the edit is restored"})
        return step.entry

    def redo(self) -> dict:
        """Redo the last undone edit."""
        if not self._redo:
            raise UserError("nothing to redo")
        step = self._redo.pop()
        self._undo.append(_Step(units=list(self.units), entry=step.entry))
        self.units = step.units
        self.log.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "op": "redo",
                         "units": step.entry["units"], "what": f"redo {step.entry['op']}: {step.entry['what']}",
                         "rule": "the undone edit is applied again"})
        return step.entry

    # ------------------------------------------------------------------ selections
    @staticmethod
    def _in_box(sp, src, t0, t1, lo, hi) -> np.ndarray:
        m = np.ones(len(sp), bool)
        if t0 is not None:
            m &= sp >= int(math.floor(t0))
        if t1 is not None:
            m &= sp <= int(math.ceil(t1))
        v = src[sp] if len(sp) else np.zeros(0)
        if lo is not None:
            m &= v >= float(lo)
        if hi is not None:
            m &= v <= float(hi)
        return m

    def _nearest(self, sp: np.ndarray, samples, radius: int) -> np.ndarray:
        """Discharges nearest to each clicked sample (within ``radius``)."""
        out = []
        for t in np.atleast_1d(np.asarray(samples, np.float64)):
            if len(sp) == 0:
                break
            k = int(np.argmin(np.abs(sp - t)))
            if abs(sp[k] - t) <= radius:
                out.append(sp[k])
        return np.unique(np.asarray(out, np.int64))

    # ------------------------------------------------------------------ discharge edits
    def delete_discharges(self, i, *, samples=None, t0=None, t1=None, lo=None, hi=None,
                          radius_ms: float = 10.0) -> int:
        """Delete discharges of unit ``i``: those nearest to ``samples`` (clicks, within
        ``radius_ms``), or every one inside the box ``t0..t1`` (samples) x ``lo..hi`` (source
        value).  Returns the number deleted (0: nothing changed, nothing logged)."""
        u = self._unit(i)
        if samples is not None:
            gone = self._nearest(u.spikes, samples, Q.ms_to_samples(radius_ms, self.fs))
            what = f"clicked at samples {np.atleast_1d(samples).astype(int).tolist()}"
        else:
            if t0 is None and t1 is None and lo is None and hi is None:
                raise UserError("delete_discharges: give samples or a box (t0, t1, lo, hi)")
            gone = u.spikes[self._in_box(u.spikes, u.source, t0, t1, lo, hi)]
            what = f"box samples {t0}..{t1}, source {lo}..{hi}"
        if len(gone) == 0:
            return 0
        keep = np.setdiff1d(u.spikes, gone)
        self._replace(int(i), self._derive(u, spikes=keep, edited=True), "delete_discharges",
                      f"deleted {len(gone)} discharge(s), {what}")
        return int(len(gone))

    def _local_peaks(self, src: np.ndarray, r: int, a: int, b: int) -> np.ndarray:
        """Samples in [a, b] where the source is the maximum of ±r samples and positive."""
        a, b = max(0, a), min(len(src) - 1, b)
        if b < a:
            return np.zeros(0, np.int64)
        lo, hi = max(0, a - r), min(len(src), b + r + 1)
        seg = np.asarray(src[lo:hi], np.float64)
        m = Q.peak_mask(seg, r)
        idx = np.flatnonzero(m) + lo
        return idx[(idx >= a) & (idx <= b)].astype(np.int64)

    def _resolve_conflicts(self, old: np.ndarray, new: np.ndarray, src: np.ndarray) -> np.ndarray:
        """``old`` plus ``new`` discharges: a new one closer than the minimum distance to others
        goes in only if its source value is higher than theirs (they then go); new ones are
        taken highest first."""
        d = self.d
        kept = np.asarray(old, np.int64).copy()
        new = np.asarray(new, np.int64)
        for t in new[np.argsort(-src[new], kind="stable")]:
            a = np.searchsorted(kept, t - d + 1)
            b = np.searchsorted(kept, t + d - 1, side="right")
            near = kept[a:b]
            if len(near) and src[near].max() >= src[t]:
                continue
            kept = np.concatenate([kept[:a], [t], kept[b:]])
        return kept

    def add_discharges(self, i, *, samples=None, t0=None, t1=None, lo=None, hi=None,
                       snap_ms: float = 5.0, peak_ms: float = 2.0) -> int:
        """Add discharges to unit ``i`` at source peaks: near each clicked sample (the largest
        local maximum within ``±snap_ms``), or every local maximum (``±peak_ms``) inside the box
        ``t0..t1`` x ``lo..hi``.  Returns the number of discharges gained (0: nothing logged)."""
        u = self._unit(i)
        src = np.asarray(u.source, np.float64)
        r = max(1, Q.ms_to_samples(peak_ms, self.fs))
        if samples is not None:
            w = max(1, Q.ms_to_samples(snap_ms, self.fs))
            cand = []
            for t in np.atleast_1d(np.asarray(samples, np.float64)):
                t = int(round(t))
                pk = self._local_peaks(src, r, t - w, t + w)
                if len(pk) == 0:
                    a, b = max(0, t - w), min(len(src), t + w + 1)
                    if b > a:
                        cand.append(a + int(np.argmax(src[a:b])))
                else:
                    cand.append(int(pk[np.argmax(src[pk])]))
            new = np.unique(np.asarray(cand, np.int64))
            what = f"clicked at samples {np.atleast_1d(samples).astype(int).tolist()}"
        else:
            if t0 is None or t1 is None:
                raise UserError("add_discharges: give samples or a box (t0, t1, and optionally lo, hi)")
            pk = self._local_peaks(src, r, int(math.floor(t0)), int(math.ceil(t1)))
            new = pk[self._in_box(pk, src, None, None, lo, hi)]
            what = f"box samples {t0}..{t1}, source {lo}..{hi}"
        new = np.setdiff1d(new, u.spikes)
        if len(new) == 0:
            return 0
        sp = self._resolve_conflicts(u.spikes, new, src)
        gained = len(np.setdiff1d(sp, u.spikes))
        lost = len(np.setdiff1d(u.spikes, sp))
        if gained == 0:
            return 0
        self._replace(int(i), self._derive(u, spikes=sp, edited=True), "add_discharges",
                      f"added {gained} discharge(s)" + (f", displaced {lost} weaker one(s)" if lost else "") +
                      f", {what}")
        return int(gained)

    def rate_outliers(self, i, k: float = 3.0) -> np.ndarray:
        """Discharges :meth:`remove_outliers` would delete (see module docstring)."""
        u = self._unit(i)
        sp = u.spikes
        if len(sp) < 3:
            return np.zeros(0, np.int64)
        rate = self.fs / np.diff(sp).astype(np.float64)
        m, s = rate.mean(), rate.std()
        bad = np.flatnonzero(rate > m + k * s)
        src = u.source
        out = {int(sp[j] if src[sp[j]] < src[sp[j + 1]] else sp[j + 1]) for j in bad}
        return np.asarray(sorted(out), np.int64)

    def remove_outliers(self, i, k: float = 3.0) -> int:
        """Remove the discharges that make rate outliers (``fs / ISI > mean + k SD``)."""
        u = self._unit(i)
        gone = self.rate_outliers(i, k)
        if len(gone) == 0:
            return 0
        self._replace(int(i), self._derive(u, spikes=np.setdiff1d(u.spikes, gone), edited=True),
                      "remove_outliers", f"removed {len(gone)} discharge(s) with rate > mean + {k:g} SD")
        return int(len(gone))

    # ------------------------------------------------------------------ update (recompute the filter)
    def prepared(self):
        """The recording's whitened extended data (:func:`bmiss.pipeline.prepare.prepare` with the
        decomposition's R and band; computed once)."""
        if self.rec is None:
            raise UserError("updating a unit's filter needs the recording (--recording)")
        with self._prep_lock:  # the server may start this in the background
            if self._prep is None:
                from ..pipeline.prepare import prepare

                self._prep = prepare(self.rec.emg, self.rec.fs, R=self.R, band=self.band)
        return self._prep

    def _zt(self):
        """Time-major whitened data [N, n_ext] (cached; what the pipeline's stages read)."""
        with self._prep_lock:
            if getattr(self, "_zt_cache", None) is None:
                import jax.numpy as jnp

                prep = self.prepared()
                if int(prep.z.shape[1]) != self.n_samples:
                    raise UserError("the whitened recording and the decomposition differ in length")
                self._zt_cache = jnp.asarray(prep.z).T.block_until_ready()
        return self._zt_cache

    def _update_result(self, i):
        """The update of unit ``i`` without committing it: ``(spikes, source, filter, lag)``."""
        from ..pipeline.finalize import shift_source
        from ..pipeline.peel import peel_half, sta_best_lag, window_starts
        from ..pipeline.spikes import max_peaks

        u = self._unit(i)
        zt = self._zt()
        N = self.n_samples
        half = peel_half(self.prepared().R, self.fs, self.peel_ms)
        d = self.d
        starts, n_ok = window_starts(u.spikes, N, half, max_peaks(N, d))
        if int(n_ok) < 2:
            raise UserError(f"unit {i} has {int(n_ok)} discharge(s) away from the recording's ends; updating its "
                            "filter needs at least 2")
        _sta, w, src, det, lag = sta_best_lag(zt, starts, n_ok, half=half, d=d, flip=False)
        lag = int(lag)
        n = int(det["n_spikes"])
        peaks = np.asarray(det["spikes"][:n], np.int64)
        sp = _clean(peaks - lag, N)  # the source peaks `lag` samples after the discharges
        s = shift_source(np.asarray(src, np.float64), lag)
        c = float(np.mean(s[sp])) if len(sp) else float(np.max(np.abs(s)))
        s = (s / (c if c > 0 else 1.0)).astype(np.float32)
        return sp, s, np.asarray(w, np.float32), lag

    def update(self, i) -> int:
        """MUedit's update: filter from the unit's discharges, new source, discharges detected
        again (:func:`bmiss.pipeline.peel.sta_best_lag`, :func:`bmiss.pipeline.spikes.detect_core`).
        Returns the new number of discharges."""
        u = self._unit(i)
        sp, s, w, lag = self._update_result(i)
        before = len(u.spikes)
        self._replace(int(i), self._derive(u, spikes=sp, source=s, filter=w, edited=True),
                      "update", f"filter recomputed from {before} discharges (best lag {lag}); {len(sp)} detected")
        return int(len(sp))

    def warm_up(self) -> None:
        """Whiten the recording and compile the update once (nothing is changed), so the first
        :meth:`update` a user asks for is quick.  The server runs this in the background."""
        try:
            if self.rec is None or self.n_units == 0:
                return
            k = int(np.argmax([len(u.spikes) for u in self.units]))
            self._update_result(k)
        except UserError:
            pass
        finally:
            self.warm = True

    # ------------------------------------------------------------------ unit edits
    def delete_unit(self, i) -> None:
        """Remove unit ``i`` (later units move up by one)."""
        u = self._unit(i)
        units = [v for j, v in enumerate(self.units) if j != int(i)]
        self._commit(units, "delete_unit", [int(i)], f"deleted {u.origin} ({len(u.spikes)} discharges)")

    def flag(self, i, flagged: bool | None = None) -> bool:
        """Set (or toggle, ``flagged=None``) the review flag of unit ``i``; returns the new flag."""
        u = self._unit(i)
        f = (not u.flagged) if flagged is None else bool(flagged)
        if f == u.flagged:
            return f
        self._replace(int(i), self._derive(u, flagged=f), "flag", "flagged" if f else "unflagged")
        return f

    def best_lag(self, i, j) -> int:
        """Lag (samples) that best aligns unit ``j``'s discharges to unit ``i``'s (added to ``j``)."""
        from ..metrics import _best_lag

        a, b = self._unit(i), self._unit(j)
        return _best_lag(b.spikes, a.spikes, Q.ms_to_samples(self.dup_max_lag_ms, self.fs),
                         Q.tol_samples(self.dup_tol_ms, self.fs))

    def merge(self, i, j) -> int:
        """Merge unit ``j`` into unit ``i`` (see module docstring); returns the merged count."""
        i, j = int(i), int(j)
        if i == j:
            raise UserError(f"cannot merge unit {i} with itself")
        a, b = self._unit(i), self._unit(j)
        # the lag only means something for duplicates: unrelated trains are merged as they are
        lag = self.best_lag(i, j) if self.shared(i, j) >= self.dup_threshold else 0
        bs = _clean(b.spikes + lag, self.n_samples)
        sp = self._resolve_conflicts(a.spikes, np.setdiff1d(bs, a.spikes), np.asarray(a.source, np.float64))
        m = self._derive(a, spikes=sp, edited=True, origin=f"{a.origin} + {b.origin}")
        units = list(self.units)
        units[i] = m
        del units[j]
        self._commit(units, "merge", [i, j], f"merged {b.origin} (lag {lag} samples) into {a.origin}: "
                                             f"{len(a.spikes)} + {len(b.spikes)} -> {len(sp)} discharges")
        return int(len(sp))

    def split(self, i, threshold: float | None = None) -> int:
        """Split unit ``i`` by the source value at its discharges; the lower class becomes a new
        unit right after ``i``.  Returns the number of discharges moved."""
        from scipy.cluster.vq import kmeans2

        i = int(i)
        u = self._unit(i)
        h = np.asarray(u.source, np.float64)[u.spikes]
        if threshold is None:
            if len(h) < 4 or np.ptp(h) == 0:
                raise UserError(f"unit {i}: too few or equal discharges to split in two classes")
            cent, lab = kmeans2(h[:, None], np.array([[h.min()], [h.max()]]), minit="matrix", iter=50, seed=0)
            upper = lab == int(np.argmax(cent[:, 0]))
            rule = f"2-means (centres {float(cent.min()):.3g}, {float(cent.max()):.3g})"
        else:
            upper = h >= float(threshold)
            rule = f"threshold {float(threshold):.3g}"
        if upper.all() or not upper.any():
            raise UserError(f"unit {i}: the {rule} puts every discharge in one class; nothing to split")
        hi_u = self._derive(u, spikes=u.spikes[upper], edited=True)
        lo_u = self._new_unit(spikes=u.spikes[~upper], source=u.source, filter=u.filter,
                              params=None if u.params is None else np.full_like(u.params, np.nan),
                              param_std=None if u.param_std is None else np.full_like(u.param_std, np.nan),
                              param_interval=None if u.param_interval is None
                              else np.full_like(u.param_interval, np.nan),
                              origin=f"split of {u.origin}", edited=True)
        units = list(self.units)
        units[i] = hi_u
        units.insert(i + 1, lo_u)
        self._commit(units, "split", [i, i + 1], f"split {u.origin} by {rule}: {int(upper.sum())} stay, "
                                                 f"{int((~upper).sum())} to the new unit {i + 1}")
        return int((~upper).sum())

    # ------------------------------------------------------------------ quality, duplicates, MUAP
    def quality(self, i) -> dict:
        """``{"n", "sil", "pnr_db", "cov_isi", "rate_hz"}`` of unit ``i`` (bmiss.quality)."""
        u = self._unit(i)
        q = self._qcache.get(u.uid)
        if q is None:
            sp = u.spikes
            q = {"n": int(len(sp)),
                 "sil": Q.sil(u.source, sp, self.fs, min_distance_ms=self.min_distance_ms),
                 "pnr_db": Q.pnr(u.source, sp, self.fs),
                 "cov_isi": Q.cov_isi(sp), "rate_hz": Q.discharge_rate(sp, self.fs)}
            self._qcache[u.uid] = q
        return q

    def shared(self, i, j) -> float:
        """Fraction of shared discharges of units ``i`` and ``j`` (:func:`bmiss.quality.shared_fraction`)."""
        a, b = self._unit(i), self._unit(j)
        key = (min(a.uid, b.uid), max(a.uid, b.uid))
        v = self._pair.get(key)
        if v is None:
            v = Q.shared_fraction(a.spikes, b.spikes, tol=Q.tol_samples(self.dup_tol_ms, self.fs),
                                  max_lag=Q.ms_to_samples(self.dup_max_lag_ms, self.fs))
            self._pair[key] = v
        return v

    def duplicates(self, i) -> list[dict]:
        """Other units sharing ``>= dup_threshold`` of their discharges with unit ``i``, most
        shared first: ``[{"unit", "shared"}]``."""
        i = int(i)
        self._unit(i)
        out = [{"unit": j, "shared": self.shared(i, j)} for j in range(self.n_units) if j != i]
        out = [d for d in out if d["shared"] >= self.dup_threshold]
        return sorted(out, key=lambda d: -d["shared"])

    def band_passed(self) -> np.ndarray:
        """The recording's EMG band-passed with the decomposition's band (float32, cached)."""
        if self._xbp is None:
            if self.rec is None:
                raise UserError("the MUAPs need the recording (--recording)")
            from ..pipeline.prepare import bandpass

            x = self.rec.emg
            if self.band is not None:
                x = bandpass(x, self.fs, self.band[0], self.band[1])
            x = np.asarray(x, np.float64)
            self._xbp = (x - x.mean(axis=1, keepdims=True)).astype(np.float32)
        return self._xbp

    def muap(self, i, *, pre_ms: float = 5.0, post_ms: float = 25.0) -> dict | None:
        """Unit ``i``'s MUAP on every channel: the plain spike-triggered average of the
        band-passed EMG over ``-pre_ms..post_ms`` around the discharges (the value of
        :func:`bmiss.templates.spike_triggered_muaps` with ``deconvolve_self=False`` and that fixed
        window, tested equal; computed here by direct summation in chunks, which costs
        ``O(n_discharges x window)`` instead of an FFT of the whole recording per call).
        Returns ``{"muap": [n_ch, T] µV, "t_ms": [T], "n": used}`` or None with fewer than 2
        usable discharges."""
        u = self._unit(i)
        hit = self._muap_cache.get(u.uid)
        if hit is not None:
            return hit
        xt = self.band_passed_t()
        N = xt.shape[0]
        pre, post = Q.ms_to_samples(pre_ms, self.fs), Q.ms_to_samples(post_ms, self.fs)
        ok = u.spikes[(u.spikes - pre >= 0) & (u.spikes + post <= N)]
        if len(ok) < 2:
            return None
        lags = np.arange(-pre, post)
        acc = np.zeros((len(lags), xt.shape[1]), np.float64)
        for k in range(0, len(ok), 128):  # bounded memory for long windows x many channels
            acc += xt[ok[k:k + 128, None] + lags[None, :]].sum(axis=0, dtype=np.float64)
        out = {"muap": (acc / len(ok)).T.astype(np.float32), "t_ms": lags / self.fs * 1000.0, "n": int(len(ok))}
        self._muap_cache[u.uid] = out
        return out

    def band_passed_t(self) -> np.ndarray:
        """:meth:`band_passed` time-major, [n_samples, n_channels] (cached; fast gathers)."""
        if getattr(self, "_xbp_t", None) is None:
            self._xbp_t = np.ascontiguousarray(self.band_passed().T)
        return self._xbp_t

    # ------------------------------------------------------------------ output
    def to_decomposition(self) -> Decomposition:
        """The edited decomposition: quality recomputed, the edit log in ``meta["review"]``."""
        dec = self.dec
        units = self.units
        n = len(units)
        sources = np.stack([u.source for u in units]).astype(np.float32) if n else \
            np.zeros((0, self.n_samples), np.float32)
        F = None
        if n and all(u.filter is not None for u in units) and len({np.shape(u.filter) for u in units}) == 1:
            F = np.stack([u.filter for u in units]).astype(np.float32)
        elif not n and dec.filters is not None:
            F = np.zeros((0, np.asarray(dec.filters).shape[1]), np.float32)

        def rows(attr):
            if getattr(dec, attr) is None:
                return None
            shape = np.asarray(getattr(dec, attr)).shape[1:]
            return np.stack([np.full(shape, np.nan) if getattr(u, attr) is None else getattr(u, attr)
                             for u in units]).astype(np.float32) if n else np.zeros((0,) + shape, np.float32)

        qs = [self.quality(k) for k in range(n)]
        meta = dict(dec.meta or {})
        meta.pop("candidate_index", None)  # per-unit fields of the input no longer line up
        prev = meta.get("review")
        meta["review"] = {
            "input": self.source_path,
            "log": list(self.log),
            "flagged": [k for k, u in enumerate(units) if u.flagged],
            "origin": [u.origin for u in units],
            "edited": [k for k, u in enumerate(units) if u.edited],
            "params_stale": [k for k, u in enumerate(units) if u.edited and u.params is not None],
            "rules": RULES,
            **({"previous": prev} if prev else {}),
        }
        return Decomposition(
            spikes=[u.spikes for u in units], sources=sources, fs=dec.fs, method=dec.method, filters=F,
            sil=np.asarray([q["sil"] for q in qs], np.float32), pnr_db=np.asarray([q["pnr_db"] for q in qs], np.float32),
            cov_isi=np.asarray([q["cov_isi"] for q in qs], np.float32), params=rows("params"),
            param_std=rows("param_std"), param_names=dec.param_names, meta=meta,
            param_interval=rows("param_interval"))

    def save(self, path, *, force: bool = True) -> Path:
        """Write the edited decomposition atomically to ``path`` (never the input file)."""
        path = Path(path)
        if self.source_path is not None:
            src = Path(self.source_path)
            if path.resolve() == src.resolve():
                raise UserError(f"{path}: refusing to overwrite the input decomposition; save to another file")
        out = save_decomposition(path, self.to_decomposition(), force=force)
        self._saved = self._key()
        self.log.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "op": "save",
                         "units": [], "what": f"saved {self.n_units} units to {out}", "rule": "atomic write"})
        return out

    def summary(self) -> list[dict[str, Any]]:
        """One row per unit: index, origin, flags, quality and its duplicates."""
        out = []
        for k, u in enumerate(self.units):
            q = self.quality(k)
            out.append({"unit": k, "origin": u.origin, "flagged": u.flagged, "edited": u.edited, **q,
                        "duplicates": self.duplicates(k)})
        return out
