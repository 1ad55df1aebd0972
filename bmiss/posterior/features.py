"""Network inputs from an observed multichannel MUAP: the one preprocessing that training and inference share.

A MUAP from any grid and sampling rate becomes a set of electrode tokens and a global vector:

* **Time**: the average is aligned on the peak of its energy summed over channels (1-ms smoothing),
  so the arbitrary trigger of a blind decomposition does not matter, and resampled (linear) onto a
  fixed window of ``N_T`` samples every ``DT_MS`` ms from ``T0_MS`` around that peak (the MUAPs are
  band-passed below 500 Hz, so 2 kHz is enough). Samples outside the average's window are zero, and
  how much of the fixed window the average covers is an input.
* **Space**: electrodes are a set. Each token holds its waveform divided by the largest absolute value
  over all channels, its position relative to the centre of the used electrodes' bounding box (after
  turning the grid by the rotation the caller knows, into the fibre frame: x across, z along the
  fibres) and its noise level. Grids with more than ``NE`` electrodes are cut to the ``NE`` nearest the
  MUAP's energy centroid; the outputs (x, IZ) are relative to the bounding-box centre and shifted
  back to the grid centre by :mod:`bmiss.posterior.api`.
* **Globals**: log amplitude, peak-to-noise ratio, electrode radius, IED, sampling rate, window cover,
  number of electrodes and the tissue values the caller knows (fat, skin, anisotropy; each with a
  known flag, 0 where missing).

Units: µV, mm, ms, Hz.
"""
from __future__ import annotations

import numpy as np

FEATURE_VERSION = 1
T0_MS, DT_MS, N_T = -10.0, 0.5, 96
NE = 64
POS_SCALE_MM = 30.0
N_TOKEN = N_T + 3  # waveform, x, z, log noise
GLOBAL_NAMES = ("log_amp", "log_pnr", "radius", "ied", "fs", "cover_pre", "cover_post", "n_el",
                "fat", "fat_known", "skin", "skin_known", "aniso", "aniso_known")
N_GLOBAL = len(GLOBAL_NAMES)
TISSUE_KEYS = ("fat_mm", "skin_mm", "anisotropy")


def rotate(pos: np.ndarray, rotation_deg: float) -> np.ndarray:
    """Grid-frame positions [..., 2] (x across, z along the fibres when unturned) -> fibre frame,
    with ``bmiss.anatomy``'s sense: x = u cos θ - v sin θ, z = u sin θ + v cos θ."""
    th = np.deg2rad(rotation_deg)
    u, v = pos[..., 0], pos[..., 1]
    return np.stack([u * np.cos(th) - v * np.sin(th), u * np.sin(th) + v * np.cos(th)], -1)


def median_ied(pos: np.ndarray) -> float:
    """Median nearest-neighbour distance of positions [n, 2], mm."""
    d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(1))) if len(pos) > 1 else float("nan")


def _energy_peak(m: np.ndarray, t_ms: np.ndarray, win: tuple[float, float]) -> float:
    e = (m.astype(np.float64) ** 2).sum(0)
    dt = float(np.median(np.diff(t_ms)))
    k = max(int(round(0.5 / dt)), 1)
    e = np.convolve(e, np.ones(2 * k + 1) / (2 * k + 1), mode="same")
    e[(t_ms < win[0]) | (t_ms > win[1])] = -1.0
    return float(t_ms[int(np.argmax(e))])


def _resample(m: np.ndarray, t_ms: np.ndarray, tg: np.ndarray, win: tuple[float, float]) -> np.ndarray:
    """m [C, T] on t_ms -> [C, len(tg)] by linear interpolation; zero outside ``win`` and the samples."""
    dt = (t_ms[-1] - t_ms[0]) / (len(t_ms) - 1)
    f = (tg - t_ms[0]) / dt
    i0 = np.clip(np.floor(f).astype(int), 0, len(t_ms) - 2)
    a = f - i0
    out = m[:, i0] * (1 - a) + m[:, i0 + 1] * a
    inside = (tg >= max(win[0], t_ms[0])) & (tg <= min(win[1], t_ms[-1]))
    return out * inside


def encode(muaps: np.ndarray, noise_std: np.ndarray, t_ms: np.ndarray, positions_mm: np.ndarray,
           radius_mm: float | np.ndarray, fs: float | np.ndarray, *, n_el: np.ndarray | None = None,
           window_ms: np.ndarray | None = None, rotation_deg: float = 0.0) -> dict:
    """Tokens and globals for MUAPs [n, C, T] µV.

    Parameters
    ----------
    muaps : [n, C, T] µV, band-passed spike-triggered averages (monopolar)
    noise_std : [n, C, T] or [n, C] µV, per-sample (or per-channel) std of each average
    t_ms : [T] ms, sample times relative to the trigger
    positions_mm : [C, 2] or [n, C, 2], grid frame (x across, z along the fibres), grid centre at 0
    radius_mm, fs : electrode radius (mm) and sampling rate (Hz), scalars or [n]
    n_el : [n] electrodes used per unit (the first ``n_el`` channels; padding beyond), default C
    window_ms : [n, 2] part of the window that holds data (default the whole ``t_ms``)
    rotation_deg : the grid's known rotation relative to the fibres

    Returns
    -------
    dict: ``tokens`` [n, NE, N_TOKEN], ``mask`` [n, NE] bool, ``globals_base`` [n, 8] (the tissue part is
    added by :func:`globals_with_tissue`), ``centre`` [n, 2] mm (bounding-box centre of the used
    electrodes, fibre frame), ``log_amp`` [n], ``pnr`` [n], ``cover_ms`` [n, 2] (ms of the fixed window
    the average does not cover, before/after), ``ied_mm`` [n], ``n_used`` [n], ``energy_snr`` [n] (Σ MUAP² /
    Σ noise² over the electrodes used and the fixed window).
    """
    muaps = np.asarray(muaps, np.float32)
    n, C, T = muaps.shape
    t_ms = np.asarray(t_ms, np.float64)
    noise = np.asarray(noise_std, np.float32)
    if noise.ndim == 3:
        noise = np.median(noise, axis=-1)
    pos_all = np.asarray(positions_mm, np.float64)
    if pos_all.ndim == 2:
        pos_all = np.broadcast_to(pos_all, (n, C, 2))
    pos_all = rotate(pos_all, rotation_deg)
    radius = np.broadcast_to(np.asarray(radius_mm, np.float64), (n,))
    fs = np.broadcast_to(np.asarray(fs, np.float64), (n,))
    n_el = np.full(n, C) if n_el is None else np.asarray(n_el)
    if window_ms is None:
        window_ms = np.tile([t_ms[0], t_ms[-1]], (n, 1))
    tokens = np.zeros((n, NE, N_TOKEN), np.float32)
    mask = np.zeros((n, NE), bool)
    glob = np.zeros((n, 8), np.float32)
    centre = np.zeros((n, 2))
    log_amp, pnr, ied, n_used, esnr = (np.zeros(n) for _ in range(5))
    cover = np.zeros((n, 2))
    for i in range(n):
        m, nz, pos = muaps[i, :n_el[i]], noise[i, :n_el[i]], pos_all[i, :n_el[i]]
        win = (float(window_ms[i, 0]), float(window_ms[i, 1]))
        if len(pos) > NE:  # the NE electrodes nearest the energy centroid
            en = (m.astype(np.float64) ** 2).sum(1)
            cen = (pos * en[:, None]).sum(0) / max(en.sum(), 1e-30)
            keep = np.sort(np.argsort(np.hypot(*(pos - cen).T))[:NE])
            m, nz, pos = m[keep], nz[keep], pos[keep]
        ied[i] = median_ied(pos)
        c = (pos.min(0) + pos.max(0)) / 2
        centre[i] = c
        tp = _energy_peak(m, t_ms, win)
        tg = tp + T0_MS + DT_MS * np.arange(N_T)
        w = _resample(m, t_ms, tg, win)
        s = max(float(np.abs(w).max()), 1e-6)
        k = len(pos)
        n_used[i] = k
        tokens[i, :k, :N_T] = w / s
        tokens[i, :k, N_T:N_T + 2] = (pos - c) / POS_SCALE_MM
        tokens[i, :k, N_T + 2] = np.log10(np.maximum(nz, 1e-6) / s) + 2.0
        mask[i, :k] = True
        log_amp[i] = np.log10(s)
        pnr[i] = s / max(float(np.median(nz)), 1e-6)
        inside = float(np.count_nonzero(np.abs(w).sum(0) > 0))
        esnr[i] = float((w.astype(np.float64) ** 2).sum() / max((nz.astype(np.float64) ** 2).sum() * inside, 1e-30))
        cover[i] = (max(0.0, max(win[0], t_ms[0]) - tg[0]), max(0.0, tg[-1] - min(win[1], t_ms[-1])))
        glob[i] = (log_amp[i] - 1.0, np.log10(pnr[i]) - 1.5, radius[i], ied[i] / 10.0, 2048.0 / fs[i],
                   cover[i, 0] / 10.0, cover[i, 1] / 10.0, k / NE)
    return {"tokens": tokens, "mask": mask, "globals_base": glob, "centre": centre, "log_amp": log_amp, "pnr": pnr,
            "cover_ms": cover, "ied_mm": ied, "n_used": n_used, "energy_snr": esnr}


def globals_with_tissue(globals_base: np.ndarray, tissue: dict) -> np.ndarray:
    """Append the known tissue values: ``tissue`` maps ``TISSUE_KEYS`` to a scalar, an [n] array
    (NaN = unknown) or None (unknown)."""
    n = globals_base.shape[0]
    cols = []
    for key, scale in zip(TISSUE_KEYS, (5.0, 2.0, 5.0)):
        v = tissue.get(key)
        v = np.full(n, np.nan) if v is None else np.broadcast_to(np.asarray(v, np.float64), (n,))
        known = np.isfinite(v)
        cols += [np.where(known, v, 0.0) / scale, known.astype(np.float64)]
    return np.concatenate([globals_base, np.stack(cols, 1).astype(np.float32)], 1)
