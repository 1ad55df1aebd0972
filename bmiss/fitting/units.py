"""Every unit's MU properties fitted to its own spike-triggered MUAP under a fitted subject model."""
from __future__ import annotations

import math
import time
from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import devices
from ..errors import FitError
from ..templates import explained_variance, search_bounds, spike_triggered_muaps, usable_discharges
from .bounds import to_phys, to_unc
from .model import chunked, decimate, observations, optimise, optimise_units, unit_outputs
from .result import SubjectFit, UnitFit
from .settings import UnitFitSettings
from .starts import initial_units
from .uncertainty import unit_laplace

__all__ = ["fit_units"]


def _with_start(held, th_s, U0, start):
    """``U0`` [n, 8] (unconstrained) with depth, x, log fibres, IZ, CV and length set from ``start``
    [n, 6] (physical, ``PARAM_NAMES``; IZ in the grid-centred frame) where its row is finite; the
    gain and the time shift stay the bank's (amplitude and lag of the matched MUAP)."""
    subj = np.asarray(held.subject(th_s), np.float64)
    lo, hi = np.asarray(held.unit_lo, np.float64), np.asarray(held.unit_hi, np.float64)
    v = np.asarray(to_phys(U0, lo, hi), np.float64)
    st = np.asarray(start, np.float64)
    ok = np.isfinite(st).all(1)
    length = st[:, 5]
    v_new = v.copy()
    v_new[:, 0] = st[:, 0] - subj[0] - subj[1]  # depth below the muscle surface
    v_new[:, 1], v_new[:, 2], v_new[:, 4], v_new[:, 5] = st[:, 1], st[:, 2], st[:, 4], length
    v_new[:, 3] = (st[:, 3] + subj[4]) / np.where(ok, length, 1.0) + 0.5  # IZ in the fit's (grid-offset) frame
    v = np.where(ok[:, None], v_new, v)
    return jnp.asarray(to_unc(np.clip(v, lo + 1e-3 * (hi - lo), hi - 1e-3 * (hi - lo)), lo, hi))


def fit_units(sf: SubjectFit, rec, spikes: list, *, settings: UnitFitSettings | None = None,
              seed: int = 0, start: np.ndarray | None = None) -> UnitFit:
    """Fit every unit's properties to its own observed MUAP with the subject held at ``sf``.

    The MUAP of each unit (spike-triggered average over the subject fit's window) is fitted by
    its own Levenberg-Marquardt fit (``settings.solver``) through the fitted subject's conductor:
    depth, x, fibre count (amplitude informs size, the gain is tied by its prior), IZ, CV, length,
    gain and shift; the population prior of the subject fit ties length, CV and IZ weakly to the
    subject's means. Units are fitted in chunks of
    ``settings.pad_to`` (the last one padded), so any number of units shares one compilation.

    Parameters
    ----------
    sf : SubjectFit
        A fitted subject (:func:`bmiss.fitting.fit_subject`) of the same recording.
    rec : Recording
    spikes : list of int arrays
        Discharge samples of the units to fit (e.g. a decomposition's ``spikes``).
    settings : UnitFitSettings
        Units with fewer than ``min_discharges`` usable discharges, or whose average has less energy
        than ``min_template_snr`` times its noise energy, are not fitted (NaN, reason in ``status``).
    start : [n_units, 6] array, optional
        Starting properties (``PARAM_NAMES``, physical units; e.g. the amortized posterior's mean);
        rows with a NaN start from the best-matching MUAP of a random bank (the default for all).

    Returns
    -------
    UnitFit

    Examples
    --------
    >>> sf = bmiss.fit(rec, decomposition=dec)  # doctest: +SKIP
    >>> uf = fit_units(sf, rec, dec.spikes)  # doctest: +SKIP
    >>> uf.params[:, 0]  # depth of every unit, mm  # doctest: +SKIP
    """
    s = settings or UnitFitSettings()
    if sf.model is None or sf.theta_subject is None:
        raise FitError("this SubjectFit carries no model (it was loaded, not fitted); run bmiss.fit first")
    t_all = time.perf_counter()
    n_all = len(spikes)
    params = np.full((n_all, 6), np.nan)
    std = np.full((n_all, 6), np.nan)
    gain, shift, ev = (np.full(n_all, np.nan) for _ in range(3))
    status = ["few discharges"] * n_all
    timing = {}
    w0, w1 = sf.window_full
    pre, post = search_bounds(rec.fs, window=(int(w0), int(w1)))
    ok = [i for i, sp in enumerate(spikes) if len(usable_discharges(sp, rec.n_samples, pre, post)) >= s.min_discharges]
    if not ok:
        return UnitFit(params, std, gain, shift, ev, status, {"total": 0.0})
    t0 = time.perf_counter()
    tpl = spike_triggered_muaps(rec.emg, [spikes[i] for i in ok], rec.fs, band=sf.templates.band,
                                window=(int(w0), int(w1)), min_discharges=s.min_discharges, seed=seed)
    tpl, _ = decimate(tpl)
    model = sf.model
    if tpl.muaps.shape[-1] != model.T:
        raise FitError(f"unit averages have {tpl.muaps.shape[-1]} samples but the subject model {model.T}")
    cmask = np.zeros(rec.n_channels, bool)
    cmask[np.asarray(sf.channels_used if sf.channels_used is not None else range(rec.n_channels))] = True
    snr = ((tpl.muaps[:, cmask] ** 2).sum((1, 2)) / np.maximum((tpl.noise_std[:, cmask] ** 2).sum((1, 2)), 1e-30))
    keep = np.flatnonzero(snr >= s.min_template_snr)
    for k in np.flatnonzero(snr < s.min_template_snr):
        status[ok[k]] = "weak average"
    timing["templates"] = round(time.perf_counter() - t0, 2)
    if len(keep) == 0:
        timing["total"] = round(time.perf_counter() - t_all, 2)
        return UnitFit(params, std, gain, shift, ev, status, timing)
    obs, w = observations(replace(tpl, muaps=tpl.muaps[keep], noise_std=tpl.noise_std[keep]), cmask)
    n = len(keep)
    c = s.pad_to
    n_pad = -(-n // c) * c - n
    if n_pad:  # padded units carry zero weight: they neither pull nor change the compiled shapes
        obs = jnp.concatenate([obs, jnp.zeros((n_pad,) + obs.shape[1:], obs.dtype)])
        w = jnp.concatenate([w, jnp.zeros((n_pad,) + w.shape[1:], w.dtype)])
    th_s = jnp.asarray(sf.theta_subject)
    if s.gain_prior_sd is not None:
        model = replace(model, prior_sd=tuple(model.prior_sd[:3]) + (float(s.gain_prior_sd),))
    held = eqx.tree_at(lambda m: (m.sub_fixed, m.sub_fixed_val), model,
                       (jnp.ones_like(model.sub_fixed), jnp.where(model.sub_fixed, model.sub_fixed_val, th_s)))
    t0 = time.perf_counter()
    U0, _ = initial_units(held, th_s, obs, w, jax.random.PRNGKey(seed + 1), s.n_bank, sf.base)
    if start is not None:
        st = np.full((U0.shape[0], 6), np.nan)
        st[:n] = np.asarray(start, np.float64)[[ok[k] for k in keep]]
        U0 = _with_start(held, th_s, U0, st)
    # chunks of pad_to units: one compiled shape whatever the number of units (each chunk split over
    # the devices; one device: as is)
    chunks = [devices.shard_leading((U0[i:i + c], obs[i:i + c], w[i:i + c])) for i in range(0, len(U0), c)]
    timing["devices"] = devices.n_shards(chunks[0][0])
    th_r = devices.replicate(th_s)
    if s.solver == "lm":
        U_all = jnp.concatenate([optimise_units(u0, held, th_r, o, ww, s.n_steps)[0] for u0, o, ww in chunks])
    else:
        U_all = jnp.concatenate([optimise((th_r, u0), held, o, ww, s.n_steps, "lbfgs", 0.02)[0][1]
                                 for u0, o, ww in chunks])
    m_fit, ph = chunked(unit_outputs, held, th_r, U_all, c)
    m_fit, ph = m_fit[:n], ph[:n].astype(np.float64)
    o = np.asarray(obs[:n])
    e = explained_variance(o[:, cmask], m_fit[:, cmask])
    timing["fit"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    sd = (np.concatenate([np.asarray(unit_laplace(held, th_r, U_all[i:i + c], o_, w_), np.float64)
                          for i, (_, o_, w_) in zip(range(0, len(U0), c), chunks)])[:n] if s.laplace
          else np.full((n, 8), np.nan))
    timing["laplace"] = round(time.perf_counter() - t0, 2)
    for j, k in enumerate(keep):
        i = ok[k]
        params[i], std[i] = ph[j, :6], sd[j, :6]
        gain[i], shift[i], ev[i] = math.exp(ph[j, 6]), ph[j, 7], e[j]
        status[i] = "fitted"
    timing["total"] = round(time.perf_counter() - t_all, 2)
    return UnitFit(params, std, gain, shift, ev, status, timing)
