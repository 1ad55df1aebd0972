"""Tiny synthetic convolutive mixtures for the decomposition tests (numpy only, seeded).

``synth()`` gives 16 channels, 6 MUs, 5 s at 2048 Hz, 20 dB: (emg [n_ch, N] float32,
muaps [n_mu, n_ch, T] float32, spikes list of int64 arrays).
"""
from __future__ import annotations

import numpy as np

FS = 2048.0


def synth(n_ch=16, n_mu=6, T=30, dur=5.0, fs=FS, snr_db=20.0, seed=1):
    rng = np.random.default_rng(seed)
    N = int(dur * fs)
    t = np.arange(T)
    kern = np.exp(-0.5 * (np.arange(-6, 7) / 1.5) ** 2)
    kern /= kern.sum()
    muaps = np.zeros((n_mu, n_ch, T))
    for j in range(n_mu):
        spatial = rng.gamma(0.7, 1.0, n_ch)  # distinct, sparse-ish spatial profile per MU
        win = np.exp(-0.5 * ((t - rng.uniform(0.35, 0.65) * T) / (T / 6)) ** 2)
        for c in range(n_ch):
            w = np.convolve(rng.standard_normal(T + 12), kern, mode="same")[6:6 + T]
            muaps[j, c] = spatial[c] * win * w
        muaps[j] *= rng.uniform(0.6, 1.5) / np.abs(muaps[j]).max()
    spikes = []
    for j in range(n_mu):
        rate = rng.uniform(10, 15)
        mean_isi = fs / rate
        tt, sp = rng.uniform(0, mean_isi), []
        while tt < N - T:
            sp.append(int(tt))
            tt += max(0.025 * fs, rng.normal(mean_isi, 0.2 * mean_isi))  # refractory 25 ms
        spikes.append(np.asarray(sp, np.int64))
    emg = np.zeros((n_ch, N))
    for j in range(n_mu):
        train = np.zeros(N)
        train[spikes[j]] = 1.0
        for c in range(n_ch):
            emg[c] += np.convolve(train, muaps[j, c])[:N]
    p = np.sqrt(np.mean(emg ** 2))
    emg += rng.standard_normal(emg.shape) * p / 10 ** (snr_db / 20)
    return emg.astype(np.float32), muaps.astype(np.float32), spikes
