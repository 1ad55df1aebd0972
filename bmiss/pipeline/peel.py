"""Stage ``peel``: remove an accepted unit from the whitened extended data (and its best-lag filter).

Rule: a discharge shows up in the extended data at every lag of its extended MUAP (``T + R - 1``
lags), not only where the accepted filter peaks, so deflating one filter leaves the unit
visible to a filter at another lag.  Peel-off subtracts the unit's spike-triggered average
(STA) of ``z`` over lags ``-half..half`` (``half = R + peel_ms``) at each of its discharges,
in place, and updates the activity ``||z(t)||^2`` in the touched windows.  Discharges whose
window does not lie inside the record are left out of both the average and the subtraction.
With ``rules.peel_floor > 0`` only lags whose STA energy stands above that multiple of the
noise floor of such a mean (``E||mean of k white vectors||^2 = n / k``) are subtracted:
subtracting a noise average at a unit's few discharges would itself plant a spurious
"unit" at those times, at a lag beyond the duplicate rule's reach.

The same STA gives the unit's best-lag filter (``retime``): its row of largest energy is the
extended lag at which the unit is seen with the best SNR (the oracle's ``max ||W b||``); that
row, normalised, is a filter with sharper source peaks than the one the proposer converged to.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .spikes import detect_core

__all__ = ["peel_half", "window_starts", "sta_best_lag", "subtract"]


def peel_half(R: int, fs: float, peel_ms: float) -> int:
    """Half-width (samples) of the peel-off window: extension + MUAP duration."""
    from ..quality import ms_to_samples

    return int(R + ms_to_samples(peel_ms, fs))


def window_starts(spikes, N: int, half: int, P: int):
    """Device arrays ``(starts [P] int32, n_ok)``: window starts ``spike - half`` of the
    discharges whose ``[spike - half, spike + half]`` window lies inside ``[0, N)``, padded."""
    sp = np.asarray(spikes, np.int64)
    pk = sp[(sp >= half) & (sp < N - half)] - half
    st = np.zeros(P, np.int32)
    st[: len(pk)] = pk[:P]
    return jnp.asarray(st), jnp.int32(min(len(pk), P))


@partial(jax.jit, static_argnames=("half", "d", "flip"))
def sta_best_lag(zt, starts, n_ok, *, half: int, d: int, flip: bool = True):
    """STA of ``zt`` [N, n] over windows ``[starts[i], starts[i] + 2 half]`` and the best-lag
    filter.  Returns ``(sta [2 half + 1, n], w [n], source [N], detection dict, lag of w
    relative to the discharges)``."""
    N, n = zt.shape
    L = 2 * half + 1

    def acc(i, a):
        return a + lax.dynamic_slice(zt, (starts[i], 0), (L, n))

    sta = lax.fori_loop(0, n_ok, acc, jnp.zeros((L, n), jnp.float32)) / jnp.maximum(n_ok, 1)
    k = jnp.argmax(jnp.sum(sta * sta, axis=1))
    w = sta[k] / jnp.maximum(jnp.linalg.norm(sta[k]), 1e-20)
    src = zt @ w
    return sta, w, src, detect_core(src, d=d, flip=flip), k - half


@partial(jax.jit, donate_argnums=(0, 3))
def subtract(zt, starts, n_ok, act, sta, floor):
    """Peel-off: subtract ``sta`` [L, n] at every window (same ``starts`` as
    :func:`sta_best_lag`), in place (buffer donation).  Lags whose STA energy is at most
    ``floor`` times the energy of a mean of ``n_ok`` white vectors (``n / n_ok``) are noise
    and left alone (``floor = 0``: subtract every lag).  Returns ``(zt, act)``."""
    L, n = sta.shape
    keep = jnp.sum(sta * sta, axis=1) > floor * n / jnp.maximum(n_ok, 1)
    sta = jnp.where(keep[:, None], sta, 0.0)

    def sub(i, c):
        zz, aa = c
        new = lax.dynamic_slice(zz, (starts[i], 0), (L, n)) - sta
        zz = lax.dynamic_update_slice(zz, new, (starts[i], 0))
        aa = lax.dynamic_update_slice(aa, jnp.sum(new * new, axis=1), (starts[i],))
        return zz, aa

    return lax.fori_loop(0, n_ok, sub, (zt, act))
