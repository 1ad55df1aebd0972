"""Motoneuron pool and discharge timing after Fuglevand, Winter & Patla (1993).

Fuglevand AJ, Winter DA, Patla AE (1993) "Models of recruitment and rate coding
organization in motor-unit pools", J Neurophysiol 70(6):2470-2488.

Excitation ``E`` is a dimensionless drive in 0..1 (fraction of maximum). Motor
unit ``i`` is silent while ``E < thr_i`` and otherwise discharges at

    r_i(E) = clip(min_rate + gain_i (E - thr_i), min_rate, peak_rate_i)   [Hz]

with Gaussian inter-spike intervals of mean ``1/r`` and std ``isi_cov/r``.
Units are always ordered by recruitment threshold (index 0 recruited first).
Spike times are integer sample indices.
"""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# Absolute refractory floor on a drawn ISI (s): a Gaussian tail must never make
# two discharges coincide or go backwards in time.
ISI_MIN_S = 0.005


class Pool(eqx.Module):
    """Per-unit properties, each ``[n_units]`` float32, sorted by threshold.

    thresholds     recruitment threshold, excitation units (0..1)
    peak_rates_hz  discharge rate reached at excitation 1.0, Hz
    min_rates_hz   discharge rate at recruitment, Hz
    gains          rate gain, Hz per unit excitation
    n_fibres       muscle fibres innervated (float, for differentiable models)
    isi_cov        coefficient of variation of the inter-spike intervals (scalar)
    """

    thresholds: jax.Array
    peak_rates_hz: jax.Array
    min_rates_hz: jax.Array
    gains: jax.Array
    n_fibres: jax.Array
    isi_cov: float

    @property
    def n_units(self) -> int:
        return int(self.thresholds.shape[0])


def make_pool(
    n_units: int,
    *,
    recruitment_range: float = 30.0,
    recruitment_end: float = 0.7,
    min_rate_hz: float = 8.0,
    peak_rate_first_hz: float = 35.0,
    peak_rate_last_hz: float = 25.0,
    fibres_min: float = 25,
    fibres_max: float = 900,
    isi_cov: float = 0.15,
) -> Pool:
    """Deterministic Fuglevand (1993) pool of ``n_units`` motor units.

    Thresholds follow ``RTE_i = exp(i ln(RR) / N)``, i = 1..N (Fuglevand eq. 1),
    scaled so the last unit is recruited at ``recruitment_end`` (fraction of
    maximum excitation). Peak rates fall linearly with threshold from
    ``peak_rate_first_hz`` to ``peak_rate_last_hz`` (Fuglevand eq. 5). Unlike
    Fuglevand's common gain, each unit gets its own gain so that it reaches
    its peak rate exactly at excitation 1.0. Fibre counts grow geometrically
    from ``fibres_min`` to ``fibres_max`` (size principle: small units first).
    """
    if n_units < 1:
        raise ValueError(f"n_units must be >= 1, got {n_units}")
    if recruitment_range <= 1.0:
        raise ValueError(f"recruitment_range must be > 1, got {recruitment_range}")
    if not 0.0 < recruitment_end < 1.0:
        raise ValueError(f"recruitment_end must lie in (0, 1), got {recruitment_end}")
    if not 0.0 < min_rate_hz < min(peak_rate_first_hz, peak_rate_last_hz):
        raise ValueError("need 0 < min_rate_hz < both peak rates")
    if not 0 < fibres_min <= fibres_max:
        raise ValueError("need 0 < fibres_min <= fibres_max")
    if isi_cov < 0:
        raise ValueError(f"isi_cov must be >= 0, got {isi_cov}")

    i = np.arange(1, n_units + 1, dtype=np.float64)
    rte = np.exp(i * np.log(recruitment_range) / n_units)  # 1 < RTE <= RR
    thr = rte / recruitment_range * recruitment_end
    # Position along the threshold axis, 0 for the first unit, 1 for the last.
    span = thr[-1] - thr[0]
    frac_thr = (thr - thr[0]) / span if span > 0 else np.zeros_like(thr)
    peak = peak_rate_first_hz + (peak_rate_last_hz - peak_rate_first_hz) * frac_thr
    mins = np.full(n_units, float(min_rate_hz))
    gain = (peak - mins) / (1.0 - thr)
    frac_idx = np.arange(n_units) / max(n_units - 1, 1)
    fibres = fibres_min * (fibres_max / fibres_min) ** frac_idx

    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
    return Pool(f32(thr), f32(peak), f32(mins), f32(gain), f32(fibres), float(isi_cov))


def discharge_rates(pool: Pool, excitation) -> jax.Array:
    """Rate equation: excitation ``[...]`` -> rates ``[..., n_units]`` in Hz (0 when silent)."""
    e = jnp.asarray(excitation, jnp.float32)[..., None]
    r = jnp.clip(pool.min_rates_hz + pool.gains * (e - pool.thresholds),
                 pool.min_rates_hz, pool.peak_rates_hz)
    return jnp.where(e >= pool.thresholds, r, 0.0)


# ------------------------------------------------------------------ excitation profiles
def _n_samples(duration_s: float, fs: float) -> int:
    if duration_s <= 0 or fs <= 0:
        raise ValueError(f"duration_s and fs must be > 0, got {duration_s}, {fs}")
    return int(round(duration_s * fs))


def _check_level(name: str, v: float) -> None:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (fraction of maximum excitation), got {v}")


def constant(level: float, duration_s: float, fs: float) -> np.ndarray:
    """Flat excitation ``level`` (0..1) for ``duration_s`` s at ``fs`` Hz -> float32 ``[n_samples]``."""
    _check_level("level", level)
    return np.full(_n_samples(duration_s, fs), level, dtype=np.float32)


def trapezoid(level: float, duration_s: float, fs: float, ramp_s: float = 1.0) -> np.ndarray:
    """Linear ramp 0 -> ``level`` over ``ramp_s`` s, plateau, ramp back to 0 at the end.

    Returns float32 ``[n_samples]``; needs ``2 * ramp_s <= duration_s``.
    """
    _check_level("level", level)
    n = _n_samples(duration_s, fs)
    if ramp_s < 0 or 2 * ramp_s > duration_s:
        raise ValueError(f"ramp_s must lie in [0, duration_s/2] = [0, {duration_s / 2}], got {ramp_s}")
    t = np.arange(n) / fs
    x = np.interp(t, [0.0, ramp_s, duration_s - ramp_s, duration_s], [0.0, level, level, 0.0])
    return x.astype(np.float32)


def sinusoid(mean: float, amplitude: float, freq_hz: float, duration_s: float, fs: float) -> np.ndarray:
    """``mean + amplitude * sin(2 pi freq_hz t)`` -> float32 ``[n_samples]``; must stay in [0, 1]."""
    if amplitude < 0 or freq_hz < 0:
        raise ValueError("amplitude and freq_hz must be >= 0")
    _check_level("mean - amplitude", mean - amplitude)
    _check_level("mean + amplitude", mean + amplitude)
    t = np.arange(_n_samples(duration_s, fs)) / fs
    return (mean + amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


_SPEC_FORMS = ("constant:LEVEL | trapezoid:LEVEL[:ramp=SECONDS] | "
               "sinusoid:MEAN:AMPLITUDE:FREQ_HZ | file:PATH.npy")


def parse_excitation(spec: str, duration_s: float, fs: float) -> np.ndarray:
    """Build an excitation profile from a CLI string -> float32 ``[round(duration_s * fs)]``.

    Forms: ``constant:0.3``, ``trapezoid:0.5:ramp=2`` (ramp in s, default 1),
    ``sinusoid:0.3:0.1:1.0`` (mean, amplitude, Hz) and ``file:PATH.npy``, a 1-D
    array with values in [0, 1] taken to span the whole duration and linearly
    resampled to the requested number of samples.
    """
    kind, _, rest = str(spec).strip().partition(":")
    kind = kind.lower()

    def bad(why: str) -> ValueError:
        return ValueError(f"bad excitation spec {spec!r}: {why}; expected {_SPEC_FORMS}")

    if kind == "file":
        if not rest:
            raise bad("missing path")
        return _load_excitation(Path(rest), duration_s, fs)

    fields = [f.strip() for f in rest.split(":")] if rest else []

    def num(s: str, what: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise bad(f"{what} {s!r} is not a number") from None
        if not math.isfinite(v):
            raise bad(f"{what} must be finite")
        return v

    try:
        if kind == "constant":
            if len(fields) != 1:
                raise bad("constant takes exactly one value")
            return constant(num(fields[0], "level"), duration_s, fs)
        if kind == "trapezoid":
            if not 1 <= len(fields) <= 2:
                raise bad("trapezoid takes LEVEL and optionally ramp=SECONDS")
            ramp = 1.0
            if len(fields) == 2:
                key, eq, val = fields[1].partition("=")
                if eq and key.strip().lower() != "ramp":
                    raise bad(f"unknown option {key!r}")
                ramp = num(val if eq else key, "ramp")
            return trapezoid(num(fields[0], "level"), duration_s, fs, ramp_s=ramp)
        if kind == "sinusoid":
            if len(fields) != 3:
                raise bad("sinusoid takes MEAN:AMPLITUDE:FREQ_HZ")
            m, a, f = (num(v, w) for v, w in zip(fields, ("mean", "amplitude", "frequency")))
            return sinusoid(m, a, f, duration_s, fs)
    except ValueError as err:
        if str(err).startswith("bad excitation spec"):
            raise
        raise bad(str(err)) from None
    raise bad(f"unknown kind {kind!r}")


def _load_excitation(path: Path, duration_s: float, fs: float) -> np.ndarray:
    n = _n_samples(duration_s, fs)
    if not path.is_file():
        raise ValueError(f"excitation file {str(path)!r} not found (expected file:PATH.npy)")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a non-.npy file
        raise ValueError(f"cannot read excitation file {str(path)!r} as .npy: {err}") from None
    x = np.squeeze(np.asarray(x, dtype=np.float64))
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"excitation file {str(path)!r} must hold a 1-D array of >= 2 samples, "
                         f"got shape {np.shape(x)}")
    if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
        raise ValueError(f"excitation file {str(path)!r}: values must be finite and lie in [0, 1] "
                         f"(got min {np.nanmin(x):.3g}, max {np.nanmax(x):.3g})")
    if x.size != n:
        x = np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, x.size), x)
    return x.astype(np.float32)


# ------------------------------------------------------------------ discharge times
def _unit_train(thr, peak, min_rate, gain, cov, exc, fs, key, max_spikes):
    """One unit: ``max_spikes`` sequential steps; each emits a spike or -1."""
    n = exc.shape[0]
    # Padding with one silent sample at index n lets every clipped index be valid.
    exc_p = jnp.concatenate([exc, jnp.zeros((1,), exc.dtype)])
    active = jnp.concatenate([exc >= thr, jnp.zeros((1,), bool)])
    idx = jnp.arange(n + 1, dtype=jnp.int32)
    # First active sample at or after each index: lets a silent unit jump straight
    # to its next recruitment instead of burning scan steps on silence.
    next_active = jax.lax.cummin(jnp.where(active, idx, n), reverse=True)
    min_isi = ISI_MIN_S * fs

    def to_idx(t):
        return jnp.minimum(jnp.floor(t), n).astype(jnp.int32)

    def step(carry, zu):
        t, in_run = carry
        z, u = zu
        start = jnp.where(in_run, t, next_active[to_idx(t)].astype(t.dtype))
        rate = jnp.clip(min_rate + gain * (exc_p[to_idx(start)] - thr), min_rate, peak)
        isi = jnp.maximum(fs / rate * (1.0 + cov * z), min_isi)
        # After (re)recruitment the first discharge falls at a random phase of an ISI.
        cand = start + jnp.where(in_run, isi, u * isi)
        ci = to_idx(cand)
        ok = (cand < n) & active[ci]
        return (jnp.minimum(cand, n).astype(t.dtype), ok), jnp.where(ok, ci, -1)

    # fold_in(key, step) makes the draws independent of max_spikes, so a retry with
    # a larger buffer reproduces the same train.
    def draw(k):
        kz, ku = jax.random.split(jax.random.fold_in(key, k))
        return jax.random.normal(kz), jax.random.uniform(ku)

    zu = jax.vmap(draw)(jnp.arange(max_spikes, dtype=jnp.uint32))
    (t_end, _), out = jax.lax.scan(step, (jnp.float32(0.0), jnp.bool_(False)), zu)
    count = jnp.sum(out >= 0)
    big = jnp.iinfo(jnp.int32).max
    out = jnp.sort(jnp.where(out >= 0, out, big))  # spikes are in order; push gaps to the end
    return jnp.where(out == big, -1, out), count, t_end >= n


@functools.partial(jax.jit, static_argnames=("max_spikes",))
def spike_trains_padded(pool: Pool, excitation, fs, key, *, max_spikes: int):
    """Jittable core of :func:`spike_trains`; ``excitation`` float32 ``[n_samples]``.

    Returns ``(times, counts, complete)``: ``times`` int32 ``[n_units, max_spikes]``
    sample indices padded with -1, ``counts`` ``[n_units]``, and ``complete``
    ``[n_units]`` bool, False where the buffer ran out before the signal ended.
    Memory is O(n_units * n_samples).
    """
    keys = jax.random.split(key, pool.thresholds.shape[0])
    f = jax.vmap(_unit_train, in_axes=(0, 0, 0, 0, None, None, None, 0, None))
    return f(pool.thresholds, pool.peak_rates_hz, pool.min_rates_hz, pool.gains,
             jnp.float32(pool.isi_cov), jnp.asarray(excitation, jnp.float32),
             jnp.float32(fs), keys, max_spikes)


def spike_trains(pool: Pool, excitation, fs: float, key, *, max_spikes: int | None = None
                 ) -> list[np.ndarray]:
    """Discharge times of every unit for excitation ``[n_samples]`` (0..1) sampled at ``fs`` Hz.

    Returns one int64 array of sample indices per unit, threshold order. Output
    depends only on ``key`` (a ``jax.random`` key). With ``max_spikes=None`` the
    per-unit buffer grows until every train is complete; an explicit value that
    proves too small truncates the trains with a warning.
    """
    exc = np.asarray(excitation, dtype=np.float32)
    if exc.ndim != 1 or exc.size == 0:
        raise ValueError(f"excitation must be 1-D [n_samples], got shape {exc.shape}")
    if not np.all(np.isfinite(exc)) or exc.min() < 0 or exc.max() > 1:
        raise ValueError("excitation values must be finite and lie in [0, 1]")
    if max_spikes is None:
        expected = exc.size / fs * float(jnp.max(pool.peak_rates_hz)) * 1.25 + 16
        size = 1 << max(6, math.ceil(math.log2(expected)))  # few distinct shapes to compile
    else:
        size = int(max_spikes)
    while True:
        times, counts, complete = spike_trains_padded(pool, exc, fs, key, max_spikes=size)
        if bool(jnp.all(complete)):
            break
        if max_spikes is not None:
            warnings.warn(f"max_spikes={max_spikes} too small: spike trains truncated", stacklevel=2)
            break
        size *= 2
    times, counts = np.asarray(times), np.asarray(counts)
    return [times[u, :c].astype(np.int64) for u, c in enumerate(counts)]
