"""True-MUAP oracle (upper bound; MUniverse, Klotz & Rohlén 2025): simulations only.

For each true MU the MUAP ``h`` [n_ch, T] (µV, starting at the discharge) is band-passed like
the data (zero-padded by ``pad`` samples on both sides first, since the zero-phase filter
spreads it), stacked into the extended space at a lag ``l``
(:func:`bmiss.pipeline.prepare.muap_to_ext`, ``b_l``) and turned into the whitened filter
``w_l = W b_l``, i.e. the source ``s_l = b_l' C_reg^-1 (x_ext - mean)``.  Among the ``n_lags``
lags with the largest ``||W b_l||`` the one whose source has the best SIL (spikes stage) is
proposed.  The oracle's shared rules (``METHOD_RULES["oracle"]``) accept every proposal, so
every true unit yields one output unit, however poor; ``meta["true_index"][i]`` is its true
unit.  The filter for lag ``l`` peaks at ``t0 - pad + l``, so the discharges are placed at
``peak - l + pad`` exactly (``rules.align = "proposer"``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import BmissFileError
from ..prepare import Prepared, bandpass, muap_to_ext
from ..settings import OracleSettings, as_dict
from ..spikes import detect_core
from .base import AbstractProposer, Proposal, ProposerState

__all__ = ["Oracle", "oracle_filters"]


@partial(jax.jit, static_argnames=("d",))
def _sil_rows(F, zt, *, d: int):
    det = jax.vmap(partial(detect_core, d=d, flip=False))(F @ zt.T)
    return jnp.where(det["n_spikes"] >= 2, det["sil"], -jnp.inf)


def oracle_filters(prep: Prepared, muap: np.ndarray, *, n_lags: int | None = 8, pad: int | None = None):
    """Candidate whitened filters of one MUAP [n_good_ch, T] (channels already selected).

    Returns ``(F [L, n_ext] unit rows, lags [L], pad)`` sorted by decreasing ``||W b||``.
    """
    fs, R = prep.fs, prep.R
    h = np.asarray(muap, np.float64)
    if pad is None:
        pad = int(round(0.025 * fs)) if prep.band is not None else 0
    if prep.band is not None:
        hi = None if prep.band[1] is None else float(prep.band[1])
        hp = bandpass(np.pad(h, ((0, 0), (pad, pad))), fs, float(prep.band[0]), hi)
    else:
        hp = h
    all_lags = np.arange(hp.shape[1] + R - 1)
    Wb = prep.whitened.whiten_vector(np.stack([muap_to_ext(hp, R, int(lag)) for lag in all_lags], axis=1))
    nrm = np.linalg.norm(Wb, axis=0)
    order = np.argsort(-nrm, kind="stable")
    if n_lags is not None:
        order = order[: int(n_lags)]
    order = order[nrm[order] > 0]
    return (Wb[:, order] / nrm[order]).T.astype(np.float32), all_lags[order], pad


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity
class OracleState(ProposerState):
    """muaps : [n_units, n_used_channels, T] true MUAPs of the used channels; next : the next MU to
    propose; L : candidate lags per MU (fixed by the first MU so every call compiles one shape)."""

    muaps: np.ndarray
    next: int
    L: int | None


class Oracle(AbstractProposer):
    """Proposes, for each true MU, its best-SIL true-MUAP filter (see module docstring)."""

    settings: OracleSettings
    true_muaps: np.ndarray  # [n_units, n_channels, T], channels of the recording

    def init(self, ws):
        muaps = np.asarray(self.true_muaps, np.float64)
        if muaps.ndim != 3:
            raise BmissFileError(f"true_muaps must be [n_units, n_channels, T], got shape {muaps.shape}")
        if muaps.shape[1] != len(ws.prep.channel_mask):
            raise BmissFileError(f"true_muaps have {muaps.shape[1]} channels but the EMG has "
                                 f"{len(ws.prep.channel_mask)}")
        return OracleState(muaps=muaps[:, ws.prep.channel_mask, :], next=0, L=None)

    def propose(self, state: "OracleState", ws, k, idle):
        out = []
        j, L = state.next, state.L
        while len(out) < k and j < len(state.muaps):
            F, lags, pad = oracle_filters(ws.prep, state.muaps[j], n_lags=self.settings.n_lags,
                                          pad=self.settings.pad)
            L = L or max(len(F), 1)
            if len(F) == 0:  # a silent MUAP: any filter, it will find nothing
                F, lags = np.eye(1, ws.n, dtype=np.float32), np.zeros(1, np.int64)
            if len(F) < L:  # one compiled shape: pad with repeats of the best filter
                F = np.concatenate([F, np.repeat(F[:1], L - len(F), 0)])
                lags = np.concatenate([lags, np.repeat(lags[:1], L - len(lags))])
            F, lags = F[:L], lags[:L]
            sil = np.asarray(_sil_rows(jnp.asarray(F), ws.zt, d=ws.d))
            b = int(np.argmax(sil))
            out.append(Proposal(F[b], {"true_index": j, "lag": int(lags[b]), "shift": int(pad - lags[b]),
                                       "lag_sil": [float(v) for v in sil]}))
            j += 1
        return replace(state, next=j, L=L), out

    def extras(self, state, units):
        return {}, {"true_index": [u.info["true_index"] for u in units], "lag": [u.info["lag"] for u in units],
                    "lag_sil": [u.info["lag_sil"] for u in units]}

    def settings_meta(self):
        return as_dict(self.settings)
