"""The decomposition pipeline every method runs.

    prepare -> propose filters -> source -> spikes -> refine -> accept -> dedupe -> peel
            -> (repeat until the proposer is exhausted) -> finalize

Methods differ only in their proposer (:mod:`bmiss.pipeline.proposers`); every other stage is
shared and configured by :class:`~bmiss.pipeline.settings.Rules`.  Candidates live in a pool
of ``batch`` slots on the device (:func:`bmiss.pipeline.refine.run_pool`); control comes back
to the host whenever one is finished, the host judges it (accept, dedupe), peels accepted
units off the whitened data, tells the proposer, and refills the free slots.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..io import Decomposition
from . import refine as refine_mod
from .accept import Unit, verdict
from .dedupe import duplicates_of, merge
from .finalize import finalize, onset_shift, shift_source
from .peel import peel_half, sta_best_lag, subtract, window_starts
from .prepare import Prepared, prepare
from .proposers.base import AbstractProposer, Done
from .settings import Rules, as_dict
from .spikes import max_peaks, min_distance_samples

__all__ = ["Workspace", "run", "workspace"]


@dataclass
class Workspace:
    """What every stage reads: the prepared data, its time-major whitened copy ``zt`` [N, n]
    (float32, peeled in place), the activity ``act = ||z(t)||^2`` [N] and the derived sizes."""

    prep: Prepared
    rules: Rules
    zt: jax.Array
    act: jax.Array
    fs: float
    N: int
    n: int
    d: int  # minimum discharge distance, samples
    P: int  # padded spike-array length
    peel_half: int
    units: list | None = None  # units accepted by earlier phases (read by a later proposer's init)


@jax.jit
def _transpose(z):
    return z.T


@jax.jit
def _activity(zt):
    return jnp.sum(zt * zt, axis=1)


def workspace(prep: Prepared, rules: Rules) -> Workspace:
    zt = _transpose(prep.z)
    N, n = zt.shape
    d = min_distance_samples(prep.fs, rules.min_distance_ms)
    return Workspace(prep=prep, rules=rules, zt=zt, act=_activity(zt), fs=float(prep.fs), N=int(N), n=int(n), d=d,
                     P=max_peaks(N, d), peel_half=peel_half(prep.R, prep.fs, rules.peel_ms))


def _peel_and_retime(ws: Workspace, unit: Unit, log: dict) -> None:
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
        log["retimed"] += 1


def run(emg, fs: float, proposer: AbstractProposer, rules: Rules, *, method: str, batch: int = 16,
        prepared: Prepared | None = None, progress: bool = True, total: int | None = None,
        then: list | None = None) -> Decomposition:
    """Run the pipeline with ``proposer`` on ``emg`` [n_channels, n_samples] (µV) at ``fs`` Hz.

    ``batch``: candidate slots on the device; ``total``: expected number of candidates (for
    the progress bar).  ``then``: further ``(proposer, rules, batch)`` phases run on the same
    prepared, peeled data once the previous proposer is exhausted; their proposers see the
    units found so far in ``ws.units`` and dedupe against them (e.g. blind units first, then
    the model-informed search for the ones the blind search missed).  Returns a
    :class:`~bmiss.io.Decomposition` whose ``meta`` records the full settings of every phase,
    timing per stage and a log of every candidate.
    """
    t0 = time.perf_counter()
    prep = prepared if prepared is not None else prepare(emg, fs, R=rules.R, band=rules.band)
    ws = workspace(prep, rules)
    ws.zt.block_until_ready()
    t_prep = time.perf_counter() - t0
    phases = [(proposer, rules, batch, total)] + [(p, r, b, None) for p, r, b in (then or [])]
    units: list[Unit] = []
    cand_log: list[dict] = []
    log = {"accepted": 0, "rejected_sil": 0, "rejected_spikes": 0, "rejected_cov": 0, "duplicates": 0,
           "device_calls": 0, "passes": 0, "retimed": 0}
    tm = {"init": 0.0, "propose": 0.0, "pool": 0.0, "accept": 0.0, "peel": 0.0, "update": 0.0}
    t1 = time.perf_counter()
    pmeta, extra, settings_meta, done_phases = {}, {}, [], []
    for k, (prop, rules_k, batch_k, total_k) in enumerate(phases):
        if (rules_k.R, rules_k.band) != (rules.R, rules.band):
            raise ValueError("all phases of a pipeline share one preparation: give them the same R and band")
        ws.rules, ws.units = rules_k, list(units)
        tk = time.perf_counter()
        state = prop.init(ws)
        tm["init"] += time.perf_counter() - tk
        units, state = _search(ws, prop, state, rules_k, units, int(max(1, batch_k)), cand_log, log, tm,
                               desc=method if len(phases) == 1 else f"{method} {k + 1}/{len(phases)}",
                               progress=progress, total=total_k, phase=k)
        units.sort(key=lambda u: u.cand)
        done_phases.append((prop, state))
        settings_meta.append({"proposer": type(prop).__name__, "rules": as_dict(rules_k), "settings": prop.settings_meta(),
                              "batch": int(batch_k)})
    t_search = time.perf_counter() - t1
    deconv = None
    if phases[-1][1].deconvolve and units:
        tk = time.perf_counter()
        deconv = _deconvolve(ws, units)
        tm["deconvolve"] = time.perf_counter() - tk
    # per-unit fields (e.g. MU properties) once the discharges are final; a later phase sees every
    # unit, so its fields win
    tk = time.perf_counter()
    for prop, state in done_phases:
        e, m = prop.extras(state, units)
        extra.update(e)
        pmeta.update(m)
    tm["properties"] = time.perf_counter() - tk
    meta = {
        "settings": {"method": method, "rules": settings_meta[0]["rules"], "proposer": settings_meta[0]["settings"],
                     "batch": settings_meta[0]["batch"], "R": prep.R,
                     **({"phases": settings_meta} if len(phases) > 1 else {})},
        "timing_s": {"prepare": round(t_prep, 4), "search": round(t_search, 4), **{k: round(v, 4) for k, v in tm.items()},
                     "total": round(time.perf_counter() - t0, 4)},
        "channels_used": prep.channels_used,
        "excluded_channels": list(prep.report),
        "n_ext": ws.n,
        "n_candidates": len(cand_log),
        "n_rejected_sil": log["rejected_sil"],
        "n_rejected_spikes": log["rejected_spikes"],
        "n_rejected_cov": log["rejected_cov"],
        "n_duplicates": log["duplicates"],
        "n_best_lag": log["retimed"],
        "device_calls": log["device_calls"],
        "passes": log["passes"],
        "candidates": sorted(cand_log, key=lambda c: c["cand"]),
        "deconvolved": deconv is not None,
        **({"deconvolution": deconv} if deconv is not None else {}),
        **pmeta,
    }
    return finalize(units, fs=ws.fs, N=ws.N, n_ext=ws.n, method=method, meta=meta, extra=extra)


def _deconvolve(ws: Workspace, units: list[Unit]) -> dict:
    """Stage ``deconvolve``: every unit's discharges re-estimated from the band-passed EMG of the
    used channels with the units' spike-triggered MUAPs (:mod:`bmiss.deconvolve`); units keep
    their filter and source, their SIL/CoV are recomputed for the new trains."""
    from .. import deconvolve as dc
    from .. import quality

    # units with too few usable discharges for a spike-triggered MUAP pass through unchanged
    res, _ = dc.deconvolve_recording(ws.prep.x, [u.spikes for u in units], ws.fs, band=None)
    for u, sp in zip(units, res.spikes):
        u.spikes = np.asarray(sp, np.int64)
        u.peaks = u.spikes - u.shift
        s = shift_source(np.asarray(u.source, np.float64), -u.shift)  # peaks onto the discharges
        sgn = 1.0 if len(u.spikes) == 0 or np.mean(s[np.clip(u.spikes, 0, ws.N - 1)]) >= 0 else -1.0
        u.sil = quality.sil(sgn * s, u.spikes, ws.fs)
        u.cov = quality.cov_isi(u.spikes)
    out = res.summary()
    out.pop("units", None)
    out["units"] = [{k: v for k, v in r.items() if k != "unit"} for r in res.summary()["units"]]
    return out


def _search(ws: Workspace, proposer: AbstractProposer, state, rules: Rules, units: list[Unit], B: int,
            cand_log: list, log: dict, tm: dict, *, desc: str, progress: bool, total, phase: int):
    """propose -> refine -> accept -> dedupe -> peel until ``proposer`` is exhausted."""
    iteration, max_fp_iter, tol = proposer.on_device()
    st = refine_mod.new_pool(B, ws.n, ws.N, ws.P)
    slot_cand = np.full(B, -1)
    slot_info: list[dict | None] = [None] * B
    rmax = int(rules.max_refine_iter) if rules.refine else 0
    n_det = max(1, min(B, 4))
    no_Q = jnp.zeros((1, ws.n), jnp.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="cand", leave=False)
    n_cand = len(cand_log)
    while True:
        tk = time.perf_counter()
        free = np.flatnonzero(st["phase"] == refine_mod.EMPTY)
        idle = len(free) == B
        state, props = proposer.propose(state, ws, len(free), idle)
        for b, p in zip(free, props):
            st["W"][b] = p.w
            st["phase"][b] = refine_mod.ITERATE if iteration is not None else refine_mod.REFINE
            for key, v in (("it", 0), ("rk", 0), ("conv", False), ("cyc", False), ("W_prev", 0.0),
                           ("best_cov", np.inf)):
                st[key][b] = v
            slot_cand[b], slot_info[b] = n_cand, p.info
            n_cand += 1
        tm["propose"] += time.perf_counter() - tk
        if not np.any((st["phase"] == refine_mod.ITERATE) | (st["phase"] == refine_mod.REFINE)):
            break  # idle and nothing proposed: the proposer is exhausted
        tk = time.perf_counter()
        Q = proposer.deflation(state)
        stj, npass = refine_mod.run_pool(st, ws.zt, no_Q if Q is None else Q, jnp.float32(tol), iteration=iteration,
                                         max_fp_iter=max_fp_iter, max_refine_iter=rmax, min_done=1, d=ws.d,
                                         n_det=n_det, flip=rules.flip)
        st = {k: np.array(v) for k, v in stj.items()}
        log["device_calls"] += 1
        log["passes"] += int(npass)
        tm["pool"] += time.perf_counter() - tk
        tk = time.perf_counter()
        done: list[Done] = []
        to_peel: list[Unit] = []
        for b in sorted(np.flatnonzero(st["phase"] == refine_mod.DONE), key=lambda b: slot_cand[b]):
            st["phase"][b] = refine_mod.EMPTY
            nspk, silv, cov = int(st["best_n"][b]), float(st["best_sil"][b]), float(st["best_cov"][b])
            peaks = st["best_spk"][b][:nspk].astype(np.int64)
            v = verdict(nspk, silv, rules, cov)
            info = dict(slot_info[b] or {}, phase=phase)
            entry = {"cand": int(slot_cand[b]), **{k: v_ for k, v_ in info.items() if np.isscalar(v_)},
                     "refine_steps": int(st["rk"][b]), "sil": round(silv, 4), "n_spikes": nspk,
                     "cov_isi": round(cov, 4) if np.isfinite(cov) else None, "outcome": v}
            if iteration is not None:
                entry.update(fp_iters=int(st["it"][b]), converged=bool(st["conv"][b]), cycle=bool(st["cyc"][b]))
            cand_log.append(entry)
            unit = None
            if v != "accepted":
                log[{"low_sil": "rejected_sil", "few_spikes": "rejected_spikes"}.get(v, "rejected_cov")] += 1
            else:
                unit = Unit(w=st["best_W"][b].copy(), source=st["best_S"][b].copy(), peaks=peaks, sil=silv,
                            cov=cov if np.isfinite(cov) else np.inf, cand=int(slot_cand[b]), info=info)
                if rules.align == "proposer":
                    unit.shift = int(info.get("shift", 0))
                else:
                    unit.shift = onset_shift(ws.prep.x, peaks, ws.peel_half)
                unit.spikes = np.unique(np.clip(peaks + unit.shift, 0, ws.N - 1))
                dup_of = duplicates_of(unit, units, rules, ws.fs)
                if dup_of:
                    log["duplicates"] += 1
                    entry["outcome"] = v = "duplicate"
                    entry["dup_of"] = [units[j].cand for j in dup_of]
                    units, _ = merge(unit, units, dup_of, rules)
                else:
                    units.append(unit)
                    log["accepted"] += 1
                    if rules.peel or rules.retime:
                        to_peel.append(unit)
            done.append(Done(cand=int(slot_cand[b]), verdict=v, info=info, fp_w=st["fp_W"][b].copy(),
                             w=st["best_W"][b].copy(), unit=unit))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(units=len(units))
        tm["accept"] += time.perf_counter() - tk
        tk = time.perf_counter()
        for unit in to_peel:
            _peel_and_retime(ws, unit, log)
        tm["peel"] += time.perf_counter() - tk
        tk = time.perf_counter()
        state = proposer.update(state, ws, done)
        tm["update"] += time.perf_counter() - tk
    if bar is not None:
        bar.close()
    return units, state
