"""EMG synthesis: sum over MUs of (spike train ⊛ MUAP) + noise.

The convolution is causal (a MUAP starts at its discharge sample) and done by block FFT
(overlap-add): every block's spectrum of all spike trains is multiplied by all MUAP spectra in
one batched contraction over MUs, so there is no per-MU Python loop and the cost scales with
n_units x n_channels x n_samples, not with the number of discharges.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import filters


def spike_matrix(spikes: list[np.ndarray], n_samples: int) -> np.ndarray:
    """Binary discharge matrix [n_units, n_samples] float32 from per-unit sample indices."""
    s = np.zeros((len(spikes), n_samples), np.float32)
    for i, idx in enumerate(spikes):
        idx = np.asarray(idx, np.int64)
        idx = idx[(idx >= 0) & (idx < n_samples)]
        np.add.at(s[i], idx, 1.0)
    return s


@partial(jax.jit, static_argnames=("fft_len",))
def convolve_trains(trains: jax.Array, muaps: jax.Array, fft_len: int = 4096) -> jax.Array:
    """Σ_u trains[u] ⊛ muaps[u]: [n_units, N] x [n_units, n_ch, T] -> [n_ch, N] (causal, same length).

    Overlap-add with FFT length ``fft_len`` (must exceed T).
    """
    n_units, N = trains.shape
    T = muaps.shape[-1]
    if fft_len <= T:
        raise ValueError(f"fft_len ({fft_len}) must exceed the MUAP length ({T})")
    B = fft_len - T + 1  # block length: block + MUAP tail fits one FFT without wrap-around
    nb = -(-N // B)
    x = jnp.pad(trains, ((0, 0), (0, nb * B - N))).reshape(n_units, nb, B)
    X = jnp.fft.rfft(x, n=fft_len, axis=-1)  # [U, nb, F]
    M = jnp.fft.rfft(muaps, n=fft_len, axis=-1)  # [U, C, F]
    Y = jnp.einsum("ubf,ucf->cbf", X, M)
    y = jnp.fft.irfft(Y, n=fft_len, axis=-1)  # [C, nb, fft_len]
    main, tail = y[:, :, :B], y[:, :, B:B + T - 1]
    main = main.at[:, 1:, : T - 1].add(tail[:, :-1])
    return main.reshape(muaps.shape[1], nb * B)[:, :N]


def noise_std_for_snr(signal: np.ndarray, snr_db: float) -> float:
    """Noise standard deviation (µV) giving ``snr_db`` = 10 log10(P_signal / P_noise), powers over all channels."""
    p = float(np.mean(np.square(signal, dtype=np.float64)))
    return float(np.sqrt(p / 10 ** (snr_db / 10)))


def add_noise(emg: np.ndarray, fs: float, key: jax.Array, *, snr_db: float | None,
              band_hz: tuple[float, float] | None = None, powerline_uv: float = 0.0,
              powerline_hz: float = 50.0) -> tuple[np.ndarray, dict]:
    """Add Gaussian noise at ``snr_db`` (white, or band-limited to ``band_hz``) and power-line hum.

    Returns (noisy emg [n_ch, N] float32, info dict with the noise std in µV).
    """
    info: dict = {"snr_db": snr_db, "band_hz": band_hz, "powerline_uv": powerline_uv}
    out = np.asarray(emg, np.float32).copy()
    k_noise, k_phase = jax.random.split(key)
    if snr_db is not None and np.isfinite(snr_db):
        std = noise_std_for_snr(out, snr_db)
        n = np.array(jax.random.normal(k_noise, out.shape, jnp.float32))
        if band_hz is not None:
            n = filters.bandpass(n, fs, band_hz, order=4, axis=1).astype(np.float32)
        n *= std / max(float(n.std()), 1e-12)
        out += n
        info["noise_std_uv"] = std
    if powerline_uv > 0:
        t = np.arange(out.shape[1]) / fs
        ph = np.asarray(jax.random.uniform(k_phase, (out.shape[0], 1), maxval=2 * np.pi))
        out += (powerline_uv * np.sin(2 * np.pi * powerline_hz * t[None, :] + ph)).astype(np.float32)
    return out, info


def synthesize(muaps: np.ndarray, spikes: list[np.ndarray], n_samples: int) -> np.ndarray:
    """Noise-free EMG [n_channels, n_samples] float32 µV from MUAPs [n_units, n_ch, T] and discharges."""
    trains = spike_matrix(spikes, n_samples)
    T = muaps.shape[-1]
    fft_len = 4096 if T < 2048 else int(2 ** np.ceil(np.log2(2 * T)))
    return np.asarray(convolve_trains(jnp.asarray(trains), jnp.asarray(muaps, jnp.float32), fft_len=fft_len))
