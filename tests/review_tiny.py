"""A tiny recording with known spike trains and a Decomposition built directly (review tests).

8 channels (2 x 4 grid) x 5 s at 2048 Hz, three units with distinct MUAPs firing at 9-15 Hz plus
white noise.  :func:`tiny_decomposition` gives each unit the source of its true discharges
(filter = mean whitened sample at the discharges, as MUedit's update) and then damages it:
unit 0 misses 8 discharges and has 3 false ones, unit 3 is a duplicate of unit 2 (its discharges
shifted by 2 samples), so every edit has something to fix.
"""
from __future__ import annotations

import functools

import numpy as np

FS = 2048.0
N_CH = 8
DUR_S = 5.0
R = 8  # extension factor stored in the decomposition's settings (small: fast whitening)


@functools.lru_cache(maxsize=None)
def tiny_recording(seed: int = 0):
    from bmiss.io import Recording

    rng = np.random.default_rng(seed)
    N = int(FS * DUR_S)
    T = 40
    t = np.arange(T) / FS * 1000.0
    trains, muaps = [], []
    for u, rate in enumerate((9.0, 12.0, 15.0)):
        isi = FS / rate
        sp = np.cumsum(rng.normal(isi, 0.08 * isi, size=int(DUR_S * rate) + 5)).astype(np.int64) + int(0.05 * FS)
        trains.append(sp[(sp > 60) & (sp < N - 80)])
        centre = 3.0 + 2.0 * u
        shape = np.sin(2 * np.pi * (t - centre) / (6.0 + 2 * u)) * np.exp(-0.5 * ((t - centre) / 2.5) ** 2)
        gains = rng.uniform(0.3, 1.0, N_CH) * rng.choice([-1, 1], N_CH)
        gains[(u * 3) % N_CH] = 1.5  # each unit is largest on its own electrode
        muaps.append(80.0 * gains[:, None] * shape[None, :])
    emg = rng.normal(0, 4.0, size=(N_CH, N))
    for sp, m in zip(trains, muaps):
        for s in sp:
            emg[:, s:s + T] += m
    rec = Recording(emg=emg.astype(np.float32), fs=FS, grid_shape=(2, 4), ied_mm=8.0,
                    true_spikes=trains, true_muaps=np.asarray(muaps, np.float32))
    return rec


def true_sources(rec, trains):
    """Source and filter of each unit from its true discharges, as the pipeline's best-lag
    filter (:func:`bmiss.pipeline.peel.sta_best_lag`), shifted onto the discharges."""
    import jax.numpy as jnp

    from bmiss.pipeline.finalize import shift_source
    from bmiss.pipeline.peel import peel_half, sta_best_lag, window_starts
    from bmiss.pipeline.prepare import prepare
    from bmiss.pipeline.spikes import max_peaks
    from bmiss.quality import min_distance_samples

    prep = prepare(rec.emg, rec.fs, R=R)
    zt = jnp.asarray(prep.z).T
    N = rec.n_samples
    d = min_distance_samples(FS)
    half = peel_half(R, FS, 50.0)
    out = []
    for sp in trains:
        starts, n_ok = window_starts(sp, N, half, max_peaks(N, d))
        _, w, src, _, lag = sta_best_lag(zt, starts, n_ok, half=half, d=d, flip=False)
        s = shift_source(np.asarray(src, np.float64), int(lag))
        out.append(((s / s[sp].mean()).astype(np.float32), np.asarray(w, np.float32)))
    return out


def tiny_decomposition(rec_seed: int = 0, seed: int = 1):
    """A fresh damaged Decomposition of ``tiny_recording(rec_seed)`` (computed once)."""
    import copy

    return copy.deepcopy(_tiny_decomposition(rec_seed, seed))


@functools.lru_cache(maxsize=None)
def _tiny_decomposition(rec_seed: int, seed: int):
    from bmiss.io import Decomposition, recording_fingerprint

    rec = tiny_recording(rec_seed)
    rng = np.random.default_rng(seed)
    tr = [np.asarray(s, np.int64) for s in rec.true_spikes]
    srcs, filt = zip(*true_sources(rec, tr))
    spikes = [s.copy() for s in tr]
    miss = rng.choice(np.arange(2, len(tr[0]) - 2), 8, replace=False)
    false = np.asarray([tr[0][k] + int(0.045 * FS) for k in (3, 10, 20)], np.int64)
    spikes[0] = np.union1d(np.delete(tr[0], miss), false)
    spikes.append(tr[2] + 2)  # duplicate of unit 2
    sources = np.stack(list(srcs) + [np.roll(srcs[2], 2)])
    filters = np.stack(list(filt) + [filt[2]])
    params = np.tile(np.asarray([[3.5, 10.0]], np.float32), (4, 1))
    meta = {"settings": {"R": R, "rules": {"min_distance_ms": 20.0, "band": [20.0, 500.0], "dup_threshold": 0.3,
                                           "dup_tol_ms": 0.5, "dup_max_lag_ms": 25.0}},
            "recording": recording_fingerprint(rec), "candidate_index": [0, 1, 2, 3]}
    return Decomposition(spikes=spikes, sources=sources, fs=FS, method="test", filters=filters,
                         params=params, param_std=params * 0.1, param_names=("cv_m_s", "depth_mm"), meta=meta,
                         param_interval=params[..., None] * np.float32([0.8, 0.9, 1.1, 1.2]))
