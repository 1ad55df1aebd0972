"""Oracle decomposition from the TRUE MUAPs (upper bound; MUniverse, Klotz & Rohlén 2025).

For each true motor unit the MUAP ``h`` [n_ch, T] (µV, starting at the discharge) is
band-passed like the data (zero-padded by ``pad`` samples on both sides first, since the
zero-phase filter spreads it), stacked into the extended space at a lag ``l``
(:func:`bmiss.decompose.preprocess.muap_to_ext`, ``b_l``) and turned into the separation
filter ``w_l = W b_l`` in whitened space, i.e. the source

    s_l = w_l' z = b_l' C_reg^-1 (x_ext - mean)

with ``C_reg`` the extended covariance regularised by the whitening eigenvalue floor.
Discharges come from the same :func:`bmiss.decompose.spikes.detect_core` as the blind
methods.  Among the candidate lags (the ``n_lags`` with the largest ``||W b_l||``, or all
lags with ``n_lags=None``) the one with the best SIL is kept.  Every true unit yields one
output unit, however poor (evaluation decides which are identifiable, e.g. RoA >= 0.9);
``meta["true_index"][i]`` is the true unit of output unit ``i``.

Spike times are mapped back to discharge times: the filter for lag ``l`` peaks at
``t0 - pad + l``, so ``spikes = peak - l + pad`` (aligned with the true trains, zero lag).
"""
from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..io import BmissFileError, Decomposition
from .preprocess import Prepared, bandpass, muap_to_ext, prepare
from .spikes import detect_core, min_distance_samples

__all__ = ["decompose_oracle", "oracle_filters"]


@partial(jax.jit, static_argnames=("d",))
def _detect_rows(F, z, *, d: int):
    S = F @ z
    det = jax.vmap(partial(detect_core, d=d, flip=False))(S)
    return S, det


def oracle_filters(prep: Prepared, muap: np.ndarray, *, n_lags: int | None = 8, pad: int | None = None):
    """Candidate whitened-space filters of one MUAP [n_good_ch, T] (channels already selected).

    Returns ``(F [L, n_ext] unit rows, lags [L], pad)`` sorted by decreasing ``||W b||``.
    """
    fs, R = prep.fs, prep.R
    h = np.asarray(muap, np.float64)
    if pad is None:
        pad = int(round(0.025 * fs)) if prep.band is not None else 0
    if prep.band is not None:
        hp = np.pad(h, ((0, 0), (pad, pad)))
        hi = None if prep.band[1] is None else float(prep.band[1])
        hp = bandpass(hp, fs, float(prep.band[0]), hi)
    else:
        hp = h
    T = hp.shape[1]
    all_lags = np.arange(T + R - 1)
    Bm = np.stack([muap_to_ext(hp, R, int(l)) for l in all_lags], axis=1)  # [n_ext, L]
    Wb = prep.whitened.whiten_vector(Bm)  # float64 [n_ext, L]
    nrm = np.linalg.norm(Wb, axis=0)
    order = np.argsort(-nrm, kind="stable")
    if n_lags is not None:
        order = order[: int(n_lags)]
    order = order[nrm[order] > 0]
    F = (Wb[:, order] / nrm[order]).T
    return F.astype(np.float32), all_lags[order], pad


def decompose_oracle(emg, fs: float, true_muaps, *, R: int | None = None, band=(20.0, 500.0),
                     n_lags: int | None = 8, min_distance_ms: float = 20.0, pad: int | None = None,
                     prepared: Prepared | None = None, progress: bool = False) -> Decomposition:
    """Separate every true MU with its MUAP-derived filter (see module docstring).

    ``true_muaps`` [n_units, n_channels, T] with the channels of ``emg`` (excluded channels
    are dropped here as in the data).  Returns a :class:`bmiss.io.Decomposition` with one
    unit per true MU (``method="oracle"``), ``meta["true_index"]``, ``meta["lag"]`` (chosen
    extended lag per unit) and ``meta["lag_sil"]`` (SIL of every candidate lag).
    """
    t0 = time.perf_counter()
    muaps = np.asarray(true_muaps, np.float64)
    if muaps.ndim != 3:
        raise BmissFileError(f"true_muaps must be [n_units, n_channels, T], got shape {muaps.shape}")
    prep = prepared if prepared is not None else prepare(emg, fs, R=R, band=band)
    if muaps.shape[1] != len(prep.channel_mask):
        raise BmissFileError(
            f"true_muaps have {muaps.shape[1]} channels but the EMG has {len(prep.channel_mask)}")
    muaps = muaps[:, prep.channel_mask, :]
    fs = float(prep.fs)
    z = prep.z
    n, N = z.shape
    d = min_distance_samples(fs, min_distance_ms)
    it = range(len(muaps))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="oracle", leave=False)
    spikes, sources, filters, sils, covs, lags_out, lag_sil = [], [], [], [], [], [], []
    L = None
    for j in it:
        F, lags, pad_j = oracle_filters(prep, muaps[j], n_lags=n_lags, pad=pad)
        if L is None:
            L = len(F)
        if len(F) < L:  # keep one compiled shape: pad with repeats of the best filter
            F = np.concatenate([F, np.repeat(F[:1], L - len(F), 0)])
            lags = np.concatenate([lags, np.repeat(lags[:1], L - len(lags))])
        Fj = F[:L]
        lags = lags[:L]
        S, det = _detect_rows(jnp.asarray(Fj), z, d=d)
        silv = np.asarray(det["sil"], np.float64)
        silv = np.where(np.asarray(det["n_spikes"]) >= 2, silv, -np.inf)
        k = int(np.argmax(silv))
        nk = int(det["n_spikes"][k])
        pk = np.asarray(det["spikes"][k][:nk], np.int64)
        sp = np.unique(np.clip(pk - int(lags[k]) + pad_j, 0, N - 1))
        s = np.asarray(S[k], np.float64)
        c = float(np.mean(s[pk])) if nk else float(np.max(np.abs(s)))
        s = s / (c if c != 0 else 1.0)
        shift = int(lags[k]) - pad_j  # source peaks at discharge + shift; align with discharges
        s_al = np.zeros_like(s)
        if shift >= 0:
            s_al[: N - shift] = s[shift:]
        else:
            s_al[-shift:] = s[: N + shift]
        spikes.append(sp)
        sources.append(s_al.astype(np.float32))
        filters.append(Fj[k])
        sils.append(float(det["sil"][k]) if nk else np.nan)
        cv = float(det["cov_isi"][k])
        covs.append(cv if np.isfinite(cv) else np.nan)
        lags_out.append(int(lags[k]))
        lag_sil.append([float(v) for v in np.asarray(det["sil"])])
    pnr_db = None
    try:
        from ..metrics import pnr as _pnr

        pnr_db = np.array([_pnr(sources[i], spikes[i], fs) for i in range(len(spikes))], np.float32)
    except ImportError:
        pass
    meta = {
        "settings": {"R": prep.R, "band": None if band is None else list(band), "n_lags": n_lags,
                     "min_distance_ms": min_distance_ms},
        "true_index": list(range(len(spikes))),
        "lag": lags_out,
        "lag_sil": lag_sil,
        "timing_s": {"total": time.perf_counter() - t0},
        "channels_used": prep.channels_used,
        "excluded_channels": list(prep.report),
        "source_alignment": "sources shifted so their peaks sit on the discharge times",
    }
    return Decomposition(spikes=spikes, sources=np.stack(sources) if sources else np.zeros((0, N), np.float32),
                         fs=fs, method="oracle", filters=np.stack(filters) if filters else None,
                         sil=np.asarray(sils, np.float32), pnr_db=pnr_db, cov_isi=np.asarray(covs, np.float32),
                         meta=meta)
