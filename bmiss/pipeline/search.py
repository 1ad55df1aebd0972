"""Stage ``search``: propose -> refine -> accept -> dedupe -> peel until the proposer is exhausted.

Candidates live in a pool of ``batch`` slots on the device (:func:`bmiss.pipeline.refine.run_pool`);
control comes back to the host whenever one is finished, the host judges it (accept, dedupe),
peels accepted units off the whitened data, tells the proposer, and refills the free slots.
The blind search and the model search of the default ``bmiss`` are both this stage, with
another proposer (:mod:`bmiss.pipeline.proposers`).

:class:`Workspace` is what every stage of a search reads: the prepared data and its whitened,
time-major copy, which the peel step changes (a new array each time, never in place).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from .. import devices
from . import refine as refine_mod
from .accept import Unit, verdict
from .dedupe import duplicates_of, merge
from .finalize import onset_shift
from .peel import peel_half, sta_best_lag, subtract, window_starts
from .prepare import Prepared
from .proposers.base import AbstractProposer, Done
from .settings import Rules
from .spikes import max_peaks, min_distance_samples

__all__ = ["Workspace", "workspace", "SearchLog", "search"]


@dataclass
class Workspace:
    """What every stage of a search reads.

    prep : the prepared data (:func:`bmiss.pipeline.prepare.prepare`).
    rules : the shared rules of the running search.
    zt : [N, n_ext] float32 whitened extended data, time-major; peeled units are subtracted.
    act : [N] activity ``||z(t)||^2`` of ``zt``.
    fs : Hz; N : samples; n : extended dimension; d : minimum discharge distance (samples);
    P : padded spike-array length; peel_half : half-width of the peel window (samples).
    units : units accepted by earlier searches (read by a later proposer's ``init``).
    """

    prep: Prepared
    rules: Rules
    zt: jax.Array
    act: jax.Array
    fs: float
    N: int
    n: int
    d: int
    P: int
    peel_half: int
    units: list = field(default_factory=list)


@jax.jit
def _transpose(z):
    return z.T


@jax.jit
def _activity(zt):
    return jnp.sum(zt * zt, axis=1)


def workspace(prep: Prepared, rules: Rules) -> Workspace:
    """The :class:`Workspace` of ``prep`` under ``rules``."""
    zt = _transpose(prep.z)
    N, n = zt.shape
    d = min_distance_samples(prep.fs, rules.min_distance_ms)
    return Workspace(prep=prep, rules=rules, zt=zt, act=_activity(zt), fs=float(prep.fs), N=int(N), n=int(n), d=d,
                     P=max_peaks(N, d), peel_half=peel_half(prep.R, prep.fs, rules.peel_ms))


@dataclass
class SearchLog:
    """Counts, per-step times (s) and one entry per candidate, shared by every search of a run."""

    candidates: list = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {
        "accepted": 0, "rejected_sil": 0, "rejected_spikes": 0, "rejected_cov": 0, "duplicates": 0,
        "device_calls": 0, "passes": 0, "retimed": 0})
    times: dict = field(default_factory=lambda: {"init": 0.0, "propose": 0.0, "pool": 0.0, "accept": 0.0,
                                                 "peel": 0.0, "update": 0.0})
    sharded: dict = field(default_factory=dict)  # stage -> devices its rows were split over, least of the run

    def meta(self) -> dict:
        c = self.counts
        return {"n_candidates": len(self.candidates), "n_rejected_sil": c["rejected_sil"],
                "n_rejected_spikes": c["rejected_spikes"], "n_rejected_cov": c["rejected_cov"],
                "n_duplicates": c["duplicates"], "n_best_lag": c["retimed"], "device_calls": c["device_calls"],
                "passes": c["passes"], "devices": devices.meta(self.sharded),
                "candidates": sorted(self.candidates, key=lambda e: e["cand"])}


def _peel_and_retime(ws: Workspace, unit: Unit, log: SearchLog) -> None:
    """Peel ``unit`` off ``ws`` (rules.peel) and replace its filter by the best-lag one (rules.retime)."""
    rules = ws.rules
    starts, n_ok = window_starts(unit.peaks, ws.N, ws.peel_half, ws.P)
    sta, w_s, s_s, det_s, lag = sta_best_lag(ws.zt, starts, n_ok, half=ws.peel_half, d=ws.d, flip=rules.flip)
    if rules.peel:
        ws.zt, ws.act = subtract(ws.zt, starts, n_ok, ws.act, sta, jnp.float32(rules.peel_floor))
    n_s, sil_s = int(det_s["n_spikes"]), float(det_s["sil"])
    cov_s = float(det_s["cov_isi"])
    if rules.retime and verdict(n_s, sil_s, rules, cov_s) == "accepted":
        # best-lag filter: its peaks sit `lag` samples after the old ones
        unit.shift -= int(lag)
        unit.w, unit.source, unit.sil = np.asarray(w_s), np.asarray(s_s), sil_s
        unit.cov = cov_s if np.isfinite(cov_s) else np.inf
        unit.peaks = np.asarray(det_s["spikes"][:n_s], np.int64)
        unit.spikes = np.unique(np.clip(unit.peaks + unit.shift, 0, ws.N - 1))
        log.counts["retimed"] += 1


def _judge(ws: Workspace, st: dict, b: int, cand: int, info: dict, units: list[Unit], rules: Rules,
           log: SearchLog, iteration) -> tuple[Done, Unit | None, bool]:
    """Accept / dedupe the finished slot ``b``; returns (Done, unit or None, whether to peel it)."""
    nspk, silv, cov = int(st["best_n"][b]), float(st["best_sil"][b]), float(st["best_cov"][b])
    peaks = st["best_spk"][b][:nspk].astype(np.int64)
    v = verdict(nspk, silv, rules, cov)
    entry = {"cand": cand, **{k: v_ for k, v_ in info.items() if np.isscalar(v_)},
             "refine_steps": int(st["rk"][b]), "sil": round(silv, 4), "n_spikes": nspk,
             "cov_isi": round(cov, 4) if np.isfinite(cov) else None, "outcome": v}
    if iteration is not None:
        entry.update(fp_iters=int(st["it"][b]), converged=bool(st["conv"][b]), cycle=bool(st["cyc"][b]))
    log.candidates.append(entry)
    unit, peel = None, False
    if v != "accepted":
        log.counts[{"low_sil": "rejected_sil", "few_spikes": "rejected_spikes"}.get(v, "rejected_cov")] += 1
    else:
        unit = Unit(w=st["best_W"][b].copy(), source=st["best_S"][b].copy(), peaks=peaks, sil=silv,
                    cov=cov if np.isfinite(cov) else np.inf, cand=cand, info=info)
        unit.shift = int(info.get("shift", 0)) if rules.align == "proposer" else onset_shift(ws.prep.x, peaks,
                                                                                               ws.peel_half)
        unit.spikes = np.unique(np.clip(peaks + unit.shift, 0, ws.N - 1))
        dup_of = duplicates_of(unit, units, rules, ws.fs)
        if dup_of:
            log.counts["duplicates"] += 1
            entry["outcome"] = v = "duplicate"
            entry["dup_of"] = [units[j].cand for j in dup_of]
            units[:], _ = merge(unit, units, dup_of, rules)
        else:
            units.append(unit)
            log.counts["accepted"] += 1
            peel = rules.peel or rules.retime
    done = Done(cand=cand, verdict=v, info=info, fp_w=st["fp_W"][b].copy(), w=st["best_W"][b].copy(), unit=unit)
    return done, unit, peel


def search(ws: Workspace, proposer: AbstractProposer, rules: Rules, units: list[Unit], *, batch: int,
           log: SearchLog, desc: str, progress: bool = True, total: int | None = None, phase: int = 0):
    """Run ``proposer`` to exhaustion on ``ws``; returns ``(units, final proposer state)``.

    ``units`` are the units accepted so far (new ones are deduped against them and appended);
    accepted units are peeled off ``ws.zt`` as they come (``rules.peel``). ``batch``: candidate
    slots on the device; ``total``: expected number of candidates (progress bar only).
    """
    ws.rules, ws.units = rules, list(units)
    units = list(units)
    tk = time.perf_counter()
    state = proposer.init(ws)
    log.times["init"] += time.perf_counter() - tk
    B = int(max(1, batch))
    iteration, max_fp_iter, tol = proposer.on_device()
    st = refine_mod.new_pool(B, ws.n, ws.N, ws.P)
    slot_cand = np.full(B, -1)
    slot_info: list[dict | None] = [None] * B
    rmax = int(rules.max_refine_iter) if rules.refine else 0
    n_det = max(1, min(B, 4))
    no_Q = jnp.zeros((1, ws.n), jnp.float32)
    zt_src = zt_dev = None  # ws.zt placed for the pool (bmiss.devices), redone only after a peel
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="cand", leave=False)
    n_cand = len(log.candidates)
    while True:
        tk = time.perf_counter()
        free = np.flatnonzero(st["phase"] == refine_mod.EMPTY)
        state, props = proposer.propose(state, ws, len(free), len(free) == B)
        for b, p in zip(free, props):
            st["W"][b] = p.w
            st["phase"][b] = refine_mod.ITERATE if iteration is not None else refine_mod.REFINE
            for key, v in (("it", 0), ("rk", 0), ("conv", False), ("cyc", False), ("W_prev", 0.0),
                           ("best_cov", np.inf)):
                st[key][b] = v
            slot_cand[b], slot_info[b] = n_cand, p.info
            n_cand += 1
        log.times["propose"] += time.perf_counter() - tk
        if not np.any((st["phase"] == refine_mod.ITERATE) | (st["phase"] == refine_mod.REFINE)):
            break  # idle and nothing proposed: the proposer is exhausted
        tk = time.perf_counter()
        Q = proposer.deflation(state)
        if zt_src is not ws.zt:
            zt_src, zt_dev = ws.zt, devices.replicate(ws.zt)
        std = devices.shard_leading(st)  # the pool's slots split across devices (one device: st itself)
        log.sharded["search"] = min(log.sharded.get("search", 1 << 30), devices.n_shards(std["W"]))  # least split
        stj, npass = refine_mod.run_pool(std, zt_dev, devices.replicate(no_Q if Q is None else Q), jnp.float32(tol),
                                         iteration=iteration, max_fp_iter=max_fp_iter, max_refine_iter=rmax,
                                         min_done=1, d=ws.d, n_det=n_det, flip=rules.flip)
        st = {k: np.array(v) for k, v in stj.items()}
        log.counts["device_calls"] += 1
        log.counts["passes"] += int(npass)
        log.times["pool"] += time.perf_counter() - tk
        tk = time.perf_counter()
        done: list[Done] = []
        to_peel: list[Unit] = []
        for b in sorted(np.flatnonzero(st["phase"] == refine_mod.DONE), key=lambda b: slot_cand[b]):
            st["phase"][b] = refine_mod.EMPTY
            d, unit, peel = _judge(ws, st, b, int(slot_cand[b]), dict(slot_info[b] or {}, phase=phase), units,
                                   rules, log, iteration)
            done.append(d)
            if peel:
                to_peel.append(unit)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(units=len(units))
        log.times["accept"] += time.perf_counter() - tk
        tk = time.perf_counter()
        for unit in to_peel:
            _peel_and_retime(ws, unit, log)
        log.times["peel"] += time.perf_counter() - tk
        tk = time.perf_counter()
        state = proposer.update(state, ws, done)
        log.times["update"] += time.perf_counter() - tk
    if bar is not None:
        bar.close()
    units.sort(key=lambda u: u.cand)
    return units, state
