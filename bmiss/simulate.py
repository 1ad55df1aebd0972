"""Simulate an HD-EMG recording with ground truth: anatomy -> MU pool -> MUAPs -> spikes -> EMG."""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from dataclasses import replace

import jax
import numpy as np

from . import anatomy as anatomy_mod
from . import emg as emg_mod
from . import interrupts
from . import motoneurons
from .anatomy import Anatomy
from .checks import check_int, check_number, check_seed
from .errors import UserError
from .conductor import PARAM_NAMES, PARAM_UNITS, Conductor, muaps
from .io import Recording


def sample_mu_params(a: Anatomy, n_fibres: np.ndarray, key: jax.Array) -> np.ndarray:
    """Physical parameters [n_units, 6] (``PARAM_NAMES``) of a pool with the given fibre counts.

    Territories are spread uniformly over the muscle cross-section (kept inside it); IZ positions
    scatter about the muscle's IZ; CV is drawn from the anatomy's distribution and assigned in
    size order so that larger MUs conduct slightly faster (size principle).
    """
    m = a.muscle
    n = len(n_fibres)
    k = jax.random.split(key, 5)
    R = np.sqrt(n_fibres / (np.pi * m.mu_fibre_density_per_mm2))
    top = a.muscle_top_mm
    u = np.asarray(jax.random.uniform(k[0], (n,)))
    depth = top + 0.5 + R + u * np.maximum(m.thickness_mm - 1.0 - 2 * R, 0.0)
    half = np.maximum(m.width_mm / 2 - R, 0.0)
    x = np.asarray(jax.random.uniform(k[1], (n,), minval=-1.0, maxval=1.0)) * half
    L = m.fibre_length_mm + m.fibre_length_spread_mm * np.asarray(jax.random.normal(k[2], (n,)))
    b = a.param_bounds()
    L = np.clip(L, *b["length_mm"])
    iz_c = (m.iz_fraction - 0.5) * L
    iz = iz_c + m.iz_spread_fraction * L / 2 * np.asarray(jax.random.normal(k[3], (n,)))
    iz = np.clip(iz, *b["iz_mm"])
    cv_draw = np.sort(m.cv_mean_m_s + m.cv_std_m_s * np.asarray(jax.random.normal(k[4], (n,))))
    rank = np.argsort(np.argsort(n_fibres, kind="stable"), kind="stable")
    cv = np.clip(cv_draw[rank], *b["cv_m_s"])
    return np.stack([depth, x, np.log(n_fibres), iz, cv, L], 1).astype(np.float32)


MUAP_FAMILIES = ("conductor", "hermite")
MIN_DURATION_S = 0.1  # and more samples than channels (an EMG [channels, samples] must be wider than tall)


def hermite_muaps(params: np.ndarray, a: Anatomy, key: jax.Array, fs: float, T: int) -> np.ndarray:
    """Non-physical MUAPs [n_units, n_channels, T] µV: Hermite-Rodriguez waveforms with smooth maps.

    Each unit gets an order-1 or -2 Hermite-Rodriguez function (Lo Conte et al. 1994 use this family
    to describe MUAP shapes) of width 0.8-2.5 ms, a Gaussian amplitude map over the electrode plane
    centred at the unit's (x, IZ) position (widths 6-20 mm across, 15-50 mm along the fibres) and a
    delay growing linearly with the distance from the IZ along the fibres (3-6 mm/ms), so that
    it resembles a propagating MUAP without coming from any volume conductor. The peak amplitude
    grows with the fibre count like the conductor's does (∝ fibres^0.9, 100 µV at 300 fibres).
    """
    n = params.shape[0]
    xz, _ = a.grid.electrode_positions()
    M, _ = a.grid.montage_matrix()
    k = jax.random.split(key, 7)
    u = lambda i: np.asarray(jax.random.uniform(k[i], (n,)))  # noqa: E731
    order = np.where(u(0) < 0.5, 1, 2)
    width_ms = 0.8 + 1.7 * u(1)
    sx = 6 + 14 * u(2)
    sz = 15 + 35 * u(3)
    speed = 3 + 3 * u(4)
    amp = 100.0 * (np.exp(params[:, 2]) / 300.0) ** 0.9 * (0.5 + u(5))
    t_ms = np.arange(T) / fs * 1e3
    out = np.zeros((n, M.shape[0], T), np.float32)
    for i in range(n):
        dx = xz[:, 0] - params[i, 1]
        dz = xz[:, 1] - params[i, 3]
        gain = np.exp(-0.5 * (dx / sx[i]) ** 2 - 0.5 * (dz / sz[i]) ** 2)
        delay = 4.0 + np.abs(dz) / speed[i]  # ms
        x = (t_ms[None, :] - delay[:, None]) / width_ms[i]
        hr = x * np.exp(-x**2) if order[i] == 1 else (2 * x**2 - 1) * np.exp(-x**2)
        e = amp[i] * gain[:, None] * hr / np.abs(hr).max()
        out[i] = (M @ e).astype(np.float32)
    return out


def simulate(anatomy: str | Anatomy = "biceps_brachii", *, duration_s: float = 20.0, snr_db: float | None = 20.0,
             seed: int = 0, excitation: str | np.ndarray | None = None, n_units: int | None = None,
             muap_mode: str = "fibres", noise_band_hz: tuple[float, float] | None = None,
             powerline_uv: float = 0.0, tissue_overrides: dict | None = None, electrode=None,
             orientation: int | None = None, muap_family: str = "conductor", iap: str = "rosenfalck",
             grid_rotation_deg: float = 0.0, muscle_overrides: dict | None = None) -> Recording:
    """Simulate a recording with ground truth (spikes, MUAPs, MU parameters, excitation).

    anatomy: shipped name or TOML path. duration_s: s. snr_db: None = noise-free.
    excitation: spec ("constant:0.3", "trapezoid:0.5:ramp=2", "sinusoid:0.3:0.1:1", "file:x.npy"; default
    "trapezoid:0.3" with 2-s ramps, shortened to a quarter of short recordings)
    or an array [n_samples] in 0..1. muap_mode: "fibres" (random fibre layout, realistic) or
    "expected" (smooth territory average; the model the inversion uses).
    electrode / orientation: a grid code (e.g. "GR08MM1305", orientation 0|180), a channel-map file or a
    :class:`bmiss.electrodes.Layout` that replaces the anatomy's grid; the EMG channels then come
    in that layout's amplifier order (``channel_map`` says where each sits).
    tissue_overrides: layer values (e.g. ``{"fat_thickness_mm": 4}``) to simulate a conductor
    that differs from the anatomy file (model-mismatch experiments).

    Model-mismatch options (the recording's meta keeps the NOMINAL anatomy, which is what an
    inversion reads; the hidden values are in ``meta["hidden_truth"]``):
    muap_family: "conductor" (the volume conductor) or "hermite" (non-physical Hermite-Rodriguez
    waveforms with smooth amplitude maps, :func:`hermite_muaps`). iap: intracellular action potential
    shape of the conductor (``bmiss.conductor.IAP_SHAPES``). grid_rotation_deg: the real grid is turned by
    this much relative to the fibres. muscle_overrides: real [muscle] values (e.g. short fibres,
    ``{"fibre_length_mm": 35, "end_jitter_mm": 1}``).
    """
    if muap_family not in MUAP_FAMILIES:
        raise UserError(f"simulate: muap_family must be one of {', '.join(MUAP_FAMILIES)}, got {muap_family!r}")
    t0 = time.perf_counter()
    if not isinstance(anatomy, Anatomy):
        if not isinstance(anatomy, (str, os.PathLike)) or not str(anatomy).strip():
            raise UserError(f"simulate: anatomy must be a shipped anatomy name ({', '.join(anatomy_mod.list_anatomies())}), "
                            f"a TOML path or an Anatomy; got {anatomy!r}")
    seed = check_seed(seed, where="simulate")
    n_units = check_int(n_units, "n_units", 1, 2000, none_ok=True, where="simulate")
    duration_s = check_number(duration_s, "duration_s", 0, 3600, lo_open=True, unit="s", where="simulate")
    if snr_db is not None and not (isinstance(snr_db, numbers.Real) and not isinstance(snr_db, bool)
                                   and (float(snr_db) == np.inf or math.isfinite(float(snr_db)))):
        raise UserError(f"simulate: snr_db must be a number of dB, +inf or None (noise-free), got {snr_db!r}")
    powerline_uv = check_number(powerline_uv, "powerline_uv", 0, 1e4, unit="µV", where="simulate")
    a = anatomy if isinstance(anatomy, Anatomy) else anatomy_mod.load(anatomy)
    if electrode is not None:  # a named grid / channel-map file / Layout replaces the anatomy's grid, with its
        from . import electrodes  # own geometry (a named grid's spacing wins over the anatomy's: one rule)

        a = a.with_layout(electrodes.resolve_layout(electrode=electrode, orientation=orientation))
    elif orientation is not None:
        raise UserError("simulate: orientation applies to a named grid; pass electrode= too")
    min_s = max(MIN_DURATION_S, (a.grid.n_channels + 1) / a.grid.fs_hz)
    if duration_s < min_s:
        raise UserError(f"simulate: duration_s={duration_s:g} s is too short: at least {min_s:.3g} s "
                        f"({a.grid.n_channels} channels at {a.grid.fs_hz:g} Hz)")
    a_nominal = a  # what a user would describe; the overrides are the "real tissue" that differs
    if tissue_overrides:
        a = a.with_layers(**tissue_overrides)
    if muscle_overrides:
        a = replace(a, muscle=replace(a.muscle, **muscle_overrides))
    if grid_rotation_deg:
        a = replace(a, grid=replace(a.grid, rotation_deg=float(a.grid.rotation_deg + grid_rotation_deg)))
    fs = a.grid.fs_hz
    n_samples = int(round(duration_s * fs))
    key = jax.random.PRNGKey(seed)
    k_par, k_fib, k_spk, k_noise = jax.random.split(key, 4)
    p = a.pool
    pool = motoneurons.make_pool(
        p.n_units if n_units is None else n_units, recruitment_range=p.recruitment_range, recruitment_end=p.recruitment_end,
        min_rate_hz=p.min_rate_hz, peak_rate_first_hz=p.peak_rate_first_hz, peak_rate_last_hz=p.peak_rate_last_hz,
        fibres_min=p.fibres_min, fibres_max=p.fibres_max, isi_cov=p.isi_cov)
    n_fibres = np.round(np.asarray(pool.n_fibres)).astype(np.float64)
    params = sample_mu_params(a, n_fibres, k_par)
    if excitation is None:  # default: 30 % trapezoid, ramps of 2 s (shorter for short recordings)
        excitation = f"trapezoid:0.3:ramp={min(2.0, duration_s / 4):g}"
    if isinstance(excitation, str):
        exc_spec = excitation
        exc = motoneurons.parse_excitation(excitation, duration_s, fs)
    else:
        exc_spec = "array"
        exc = np.asarray(excitation, np.float32)
        if exc.shape != (n_samples,):
            raise ValueError(f"excitation array must have shape ({n_samples},) for {duration_s} s at {fs} Hz, "
                             f"got {exc.shape}")
    if muap_family == "hermite":
        M = hermite_muaps(params, a, k_fib, fs, a.grid.muap_samples)
    else:
        cond = Conductor.from_anatomy(a, iap=iap)
        M = np.asarray(muaps(cond, params, mode=muap_mode, key=k_fib, n_max=int(p.fibres_max)))
    interrupts.check()  # stage boundary: Ctrl-C stops here even if a callback swallowed it
    spikes = motoneurons.spike_trains(pool, exc, fs, k_spk)
    interrupts.check()
    clean = emg_mod.synthesize(M, spikes, n_samples)
    noisy, noise_info = emg_mod.add_noise(clean, fs, k_noise, snr_db=snr_db, band_hz=noise_band_hz,
                                          powerline_uv=powerline_uv)
    _, rc = a.grid.montage_matrix()
    meta = {
        "kind": "simulation", "anatomy": a.name, "anatomy_source": a.source, "anatomy_toml": anatomy_mod.to_toml(a_nominal),
        "tissue_overrides": tissue_overrides or {}, "muscle_overrides": muscle_overrides or {},
        "muap_family": muap_family, "iap": iap, "grid_rotation_deg": float(grid_rotation_deg),
        "hidden_truth": {"layers": dataclasses.asdict(a.layers), "muscle": dataclasses.asdict(a.muscle),
                         "grid_rotation_deg": float(a.grid.rotation_deg), "grid_centre_z_mm": float(a.grid.centre_z_mm)},
        "seed": seed, "duration_s": duration_s,
        "excitation": exc_spec, "muap_mode": muap_mode, "n_units": len(spikes), "montage": a.grid.montage,
        "units": "uV", "param_units": dict(zip(PARAM_NAMES, PARAM_UNITS)),
        "simulate_time_s": round(time.perf_counter() - t0, 3), **noise_info,
    }
    geo = {}
    if a.grid.electrode and a.grid.montage == "monopolar":
        from .electrodes import canonical_code

        named = canonical_code(a.grid.electrode) is not None
        geo = {"electrode": a.grid.electrode, "orientation": a.grid.orientation if named else None}
    return Recording(emg=noisy, fs=fs, grid_shape=a.grid.channel_grid_shape, ied_mm=a.grid.ied_mm,
                     channel_map=rc, **geo, true_spikes=spikes, true_muaps=M, true_params=params,
                     param_names=PARAM_NAMES, excitation=exc, meta=meta)
