"""Which units a subject fit uses, and where each unit's parameters start.

* :func:`select_units`: the confident blind units (SIL, CoV of ISI, discharge count).
* :func:`initial_units`: per unit, the best of a bank of random model MUAPs by normalised
  correlation over lags (shift), with its amplitude split between fibre count and gain.
"""
from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..anatomy import Anatomy
from .bounds import to_unc, unit_bounds
from .model import FitModel

__all__ = ["select_units", "initial_units"]


def select_units(dec, *, min_sil: float = 0.85, max_cov: float = 0.4, min_discharges: int = 30) -> np.ndarray:
    """Indices of the confident units of a decomposition (SIL, CoV of ISI, discharge count)."""
    keep = []
    for i in range(dec.n_units):
        n = len(dec.spikes[i])
        sil = float(dec.sil[i]) if dec.sil is not None else 1.0
        cov = float(dec.cov_isi[i]) if dec.cov_isi is not None else 0.0
        if n >= min_discharges and sil >= min_sil and (not np.isfinite(cov) or cov <= max_cov):
            keep.append(i)
    return np.array(keep, np.int64)


@eqx.filter_jit
def _bank(model: FitModel, s0, Ub):
    """MUAPs of the bank's units [B, C, T] (jitted once per shape: the model is an argument)."""
    return jax.lax.map(lambda u: model.muaps(s0, u[None])[0], Ub, batch_size=32)


def initial_units(model: FitModel, s0, obs, w, key, n_bank: int, base: Anatomy):
    """Per-unit starting points: the best of a bank of random MUAPs by normalised correlation over lags."""
    ub = unit_bounds(base)
    names = list(ub)
    lo = np.array([ub[n][0] for n in names], np.float32)
    hi = np.array([ub[n][1] for n in names], np.float32)
    k = jax.random.split(key, 4)
    subj = np.asarray(model.subject(s0))
    V = np.zeros((n_bank, 8), np.float32)
    V[:, 0] = np.asarray(jax.random.uniform(k[0], (n_bank,), minval=0.5, maxval=min(base.muscle.thickness_mm, 20.0)))
    V[:, 1] = np.asarray(jax.random.uniform(k[1], (n_bank,), minval=lo[1] + 10, maxval=hi[1] - 10))
    V[:, 2] = math.log(150.0)
    V[:, 3] = np.asarray(jax.random.uniform(k[2], (n_bank,), minval=0.3, maxval=0.7))
    V[:, 4] = subj[6]
    V[:, 5] = subj[5]
    V[:, 6] = 0.0
    V[:, 7] = 0.0
    Ub = jnp.asarray(to_unc(V, lo, hi))
    bank = np.asarray(_bank(model, s0, Ub))  # [B, C, T]
    o = np.asarray(obs * (w > 0))
    bank = bank * (np.asarray(w)[:1] > 0)
    nfft = int(2 ** np.ceil(np.log2(2 * o.shape[-1])))
    Fo = np.fft.rfft(o, nfft, axis=-1)
    Fb = np.fft.rfft(bank, nfft, axis=-1)
    xc = np.fft.irfft(np.einsum("ucf,bcf->ubf", Fo, np.conj(Fb)), nfft, axis=-1)  # [U, B, lag]
    no = np.sqrt((o**2).sum((1, 2)))[:, None]
    nb = np.sqrt((bank**2).sum((1, 2)))[None, :]
    score = xc / np.maximum(no * nb, 1e-12)[..., None]
    T = o.shape[-1]
    lags = np.arange(nfft)
    lags = np.where(lags > nfft // 2, lags - nfft, lags)
    ok = np.abs(lags) < T // 2
    score[..., ~ok] = -np.inf
    flat = score.reshape(score.shape[0], -1).argmax(1)
    b_idx, lag_idx = np.unravel_index(flat, score.shape[1:])
    best = score.reshape(score.shape[0], -1).max(1)
    U0 = V[b_idx].copy()
    dt_ms = float(model.cond.t_ms[1] - model.cond.t_ms[0])
    U0[:, 7] = np.clip(lags[lag_idx] * dt_ms, lo[7] + 0.5, hi[7] - 0.5)
    # amplitude by least squares on the matched bank MUAP, split between fibres and gain
    amp = np.array([(o[u] * np.roll(bank[b_idx[u]], lags[lag_idx[u]], -1)).sum() /
                    max((bank[b_idx[u]] ** 2).sum(), 1e-12) for u in range(o.shape[0])])
    U0[:, 2] = np.clip(np.log(150.0 * np.maximum(amp, 1e-3)), lo[2] + 0.2, hi[2] - 0.2)
    return jnp.asarray(to_unc(U0, lo, hi)), best


