"""The subject fit: adapt the forward model's tissue and geometry to a recording.

:func:`fit_subject` runs, in order:

1. **units** — the confident blind units of a decomposition (:func:`~.starts.select_units`);
2. **observed MUAPs** — spike-triggered averages with a measured window and per-sample noise std
   (:mod:`bmiss.templates`); units whose average is not clearly above its noise are dropped;
   averages are decimated to ~2 kHz (:func:`~.model.decimate`);
3. **model** — :class:`~.model.FitModel` over the base anatomy's expected-mode conductor;
4. **starts** — a profile over fat thickness (fat held at 0.5-3x the base value, the other
   parameters fitted on the strongest units); its minimum (parabola) starts step 5;
5. **joint fit** — subject and unit parameters together (Optax L-BFGS), then the population
   means set to their conditional optimum;
6. **outputs** — explained variance, Laplace std (:mod:`.uncertainty`), the fitted anatomy
   (:func:`~.result.fitted_anatomy`).

Fixed because the data cannot determine them: the overall conductivity scale (∝ amplitude), the
grid offset across the fibres (= every unit's x); the per-unit gain is tied by a prior.
Units: mm, m/s, ms, µV, S/m.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..anatomy import Anatomy
from ..conductor import Conductor
from ..errors import FitError
from ..templates import Templates, explained_variance, search_bounds, spike_triggered_muaps
from .bounds import SUBJECT_NAMES, SUBJECT_UNITS, subject_bounds, to_phys, to_unc, unit_bounds
from .model import (FitModel, band_response, chunked, decimate, decimation, observations, optimise,
                    phys_and_jacobian, unit_outputs)
from .result import SubjectFit, fitted_anatomy
from .settings import SubjectFitSettings
from .starts import initial_units, select_units
from .uncertainty import laplace

__all__ = ["fit_subject", "with_network"]


@dataclass
class _Observed:
    """Step 2's output: the kept units' averages and what the later steps need of them."""

    tpl: Templates  # decimated averages of the kept units
    idx: np.ndarray  # their indices in the decomposition
    snr: np.ndarray  # template energy / noise energy, per kept unit
    cmask: np.ndarray  # [C] channels used
    chans: np.ndarray
    q: int  # decimation factor
    window_full: tuple[int, int]  # window before decimation (samples)


def _nominal(base: Anatomy, fixed_values: dict) -> dict:
    L = base.layers
    nominal = {"fat_mm": L.fat_thickness_mm, "skin_mm": L.skin_thickness_mm,
               "anisotropy": L.muscle_conductivity_longitudinal / L.muscle_conductivity_radial,
               "rotation_deg": 0.0, "dz_mm": 0.0, "length_pop_mm": base.muscle.fibre_length_mm,
               "cv_pop_m_s": base.muscle.cv_mean_m_s, "izf_pop": base.muscle.iz_fraction}
    nominal.update({k: float(v) for k, v in (fixed_values or {}).items()})
    return nominal


def _check_fixed_values(base: Anatomy, fixed_values: dict) -> None:
    sb0 = subject_bounds(base)
    for k, v in (fixed_values or {}).items():  # before any work
        if k not in SUBJECT_NAMES:
            raise FitError(f"fixed_values: unknown subject parameter {k!r}; choose from {SUBJECT_NAMES}")
        if not sb0[k][0] <= float(v) <= sb0[k][1]:
            raise FitError(f"{k} = {v} is outside the physiological range {sb0[k]} "
                           f"({SUBJECT_UNITS[SUBJECT_NAMES.index(k)]})")


#: the fit's shapes are rounded up (window to a multiple of T_STEP samples after decimation, units to a
#: multiple of UNIT_STEP) so that recordings of one kind share compiled kernels instead of compiling
#: the fit anew for every unit count and window (~40 s per compile on the 2-core CPU, measured)
T_STEP, UNIT_STEP = 16, 8


def _bucket_window(w0: int, w1: int, limits: tuple[int, int], q: int) -> tuple[int, int]:
    """``[w0, w1)`` widened (after, then before the discharge, within ``limits``) to a multiple of
    ``T_STEP * q`` samples: more samples of the same averages, never fewer."""
    step = T_STEP * q
    need = -(-(w1 - w0) // step) * step - (w1 - w0)
    add1 = min(need, limits[1] - w1)
    add0 = min(need - add1, w0 - limits[0])
    return w0 - add0, w1 + add1


def _pad_units(obs, w, n_to: int):
    """Observations and weights padded with zero-weight units to ``n_to`` (they fit nothing and,
    having no data, change no real parameter: each padded unit sits at its prior's optimum)."""
    n_pad = n_to - obs.shape[0]
    if n_pad <= 0:
        return obs, w
    return (jnp.concatenate([obs, jnp.zeros((n_pad,) + obs.shape[1:], obs.dtype)]),
            jnp.concatenate([w, jnp.zeros((n_pad,) + w.shape[1:], w.dtype)]))


def _observe(rec, dec, idx, base: Anatomy, s: SubjectFitSettings, seed: int) -> _Observed:
    """Step 2: the kept units' spike-triggered MUAPs on their common window, decimated."""
    pre, post = search_bounds(rec.fs)  # averages over the whole search window: the fit's window is cut below
    tpl = spike_triggered_muaps(rec.emg, [dec.spikes[i] for i in idx], rec.fs, band=s.band, seed=seed,
                                window=(-pre, post))
    chans = np.asarray(dec.meta.get("channels_used", range(rec.n_channels)), np.int64)
    cmask = np.zeros(rec.n_channels, bool)
    cmask[chans] = True
    # template SNR over the union of all units' supports (what the selection rule was set on), not
    # over the whole search window, whose noise-only tails would lower it
    u0 = min(int(max(tpl.support[:, 0].min(), -pre)), 0) - tpl.window[0]
    u1 = max(int(min(tpl.support[:, 1].max(), post)), 1) - tpl.window[0]
    snr = ((tpl.muaps[:, cmask, u0:u1] ** 2).sum((1, 2)) /
           np.maximum((tpl.noise_std[:, cmask, u0:u1] ** 2).sum((1, 2)), 1e-30))
    order = np.argsort(-snr)
    order = order[snr[order] >= s.min_template_snr][:s.max_units]
    if len(order) < 2:
        raise FitError(f"only {len(order)} unit(s) with a MUAP average >= {s.min_template_snr}x its noise energy; "
                       "cannot fit a subject model")
    order = np.sort(order)
    # the common window of the kept units only (weak units' supports are noise and would widen it)
    w0 = int(max(min(tpl.support[order, 0].min(), 0), tpl.window[0]))
    w1 = int(min(max(tpl.support[order, 1].max(), 1), tpl.window[1]))
    w0, w1 = _bucket_window(w0, w1, tpl.window, decimation(tpl.fs, tpl.band))
    sl = slice(w0 - tpl.window[0], w1 - tpl.window[0])
    tpl = Templates(muaps=tpl.muaps[order][..., sl], noise_std=tpl.noise_std[order][..., sl], onset=-w0,
                    window=(w0, w1), support=tpl.support[order], n_discharges=tpl.n_discharges[order], fs=tpl.fs,
                    band=tpl.band, truncated=tpl.truncated[order])
    tpl, q = decimate(tpl)
    if tpl.muaps.shape[1] != base.grid.n_channels:
        raise FitError(f"the recording has {tpl.muaps.shape[1]} channels but the anatomy's grid "
                       f"{base.grid.n_channels}; pass --electrode CODE (or an anatomy with the recording's grid)")
    return _Observed(tpl=tpl, idx=idx[order], snr=snr[order], cmask=cmask, chans=chans, q=q, window_full=(w0, w1))


def _fit_times(pad: int, T: int, onset: int, fs: float) -> np.ndarray:
    """[T + 2 pad] sample times (ms after the discharge) at which the fit's MUAP model is read: the
    averages' window and ``pad`` samples either side (the band filter's wrap-around margin)."""
    return (np.arange(-pad, T + pad) - onset) / fs * 1e3


def _build_model(base: Anatomy, ob: _Observed, s: SubjectFitSettings, fixed_values: dict):
    """Step 3: the differentiable model; also returns the physical values of the held parameters."""
    tpl, fs = ob.tpl, ob.tpl.fs
    T = tpl.muaps.shape[-1]
    pad = 16
    t_ms = _fit_times(pad, T, tpl.onset, fs)
    cond, forward = _forward_model(base, s, fs, T + 2 * pad, t_ms)
    nfft = int(2 ** np.ceil(np.log2(T + 2 * pad)))
    sb, ub = _network_bounds(subject_bounds(base), cond, s), unit_bounds(base)
    L = base.layers
    lo_s = np.array([sb[k][0] for k in SUBJECT_NAMES], np.float32)
    hi_s = np.array([sb[k][1] for k in SUBJECT_NAMES], np.float32)
    nominal = _nominal(base, fixed_values)
    fixed_phys = np.array([nominal[k] for k in SUBJECT_NAMES], np.float32)
    psd = s.prior_sd
    model = FitModel(cond=cond, sub_lo=jnp.asarray(lo_s), sub_hi=jnp.asarray(hi_s),
                     unit_lo=jnp.asarray([v[0] for v in ub.values()], jnp.float32),
                     unit_hi=jnp.asarray([v[1] for v in ub.values()], jnp.float32),
                     filt=jnp.asarray(band_response(nfft, fs, tpl.band)),
                     sub_fixed=jnp.asarray([k in s.fix for k in SUBJECT_NAMES]),
                     sub_fixed_val=jnp.asarray(to_unc(np.clip(fixed_phys, lo_s, hi_s), lo_s, hi_s)),
                     pad=pad, nfft=nfft, T=T, sigma_r=float(L.muscle_conductivity_radial),
                     sigma_fat=float(L.fat_conductivity), sigma_skin=float(L.skin_conductivity),
                     prior_sd=(float(psd[0]), float(psd[1]), float(psd[2]), float(s.gain_prior_sd)))
    return model, fixed_phys, forward


#: the network's tissue inputs that the subject fit can free: subject name -> the weights' domain key
_NET_TISSUE = {"fat_mm": "fat_mm", "skin_mm": "skin_mm"}


def _free_tissue(s: SubjectFitSettings) -> list[str]:
    return [k for k in _NET_TISSUE if k not in s.fix]


def _network_bounds(sb: dict, cond, s: SubjectFitSettings) -> dict:
    """``sb`` with fat and skin, where fitted through the network, cut to its training domain."""
    dom = getattr(cond, "domain", None)
    if not (dom and s.free_network and _free_tissue(s)):
        return sb
    out = dict(sb)
    for k in _free_tissue(s):
        lo, hi = dom[_NET_TISSUE[k]]
        out[k] = (max(sb[k][0], float(lo)), min(sb[k][1], float(hi)))
    return out


def _at_network_edge(model: FitModel, s_fit, base: Anatomy, s: SubjectFitSettings) -> str | None:
    """Why a fit through the network must be redone with the conductor: a freed fat or skin value
    within 1 % of a bound that the network's domain added (the optimum may lie beyond it)."""
    if not (s.free_network and _free_tissue(s)):
        return None
    phys = np.asarray(model.subject(s_fit), np.float64)
    sb = subject_bounds(base)
    lo, hi = np.asarray(model.sub_lo, np.float64), np.asarray(model.sub_hi, np.float64)
    for k in _free_tissue(s):
        i = SUBJECT_NAMES.index(k)
        tol = 0.01 * (hi[i] - lo[i])
        if lo[i] > sb[k][0] and phys[i] <= lo[i] + tol:
            return f"the network's fit put {k} at {phys[i]:.2f}, its domain's lower edge {lo[i]:g}"
        if hi[i] < sb[k][1] and phys[i] >= hi[i] - tol:
            return f"the network's fit put {k} at {phys[i]:.2f}, its domain's upper edge {hi[i]:g}"
    return None


def with_network(sf: SubjectFit) -> tuple[SubjectFit | None, str]:
    """``(copy of sf whose model is the MUAP network, note)``, for later fits under a subject the
    conductor fitted (fat and skin free): the network reproduces the conductor within ~2 % and is
    2-3x cheaper per fit. ``(None, why)`` where the fitted subject lies outside the network's domain
    or the network refuses the anatomy or window; the fitted values themselves never change."""
    from dataclasses import replace

    from ..errors import SurrogateMismatchError
    from ..surrogate import load_surrogate

    m, tpl = sf.model, sf.templates
    t_ms = _fit_times(m.pad, m.T, tpl.onset, tpl.fs)
    try:
        sur = load_surrogate(sf.base, fs=tpl.fs, t_ms=t_ms, check_bounds=False)
    except SurrogateMismatchError as e:
        return None, f"the surrogate refused this anatomy: {e}"
    dom = sur.domain or {}
    for k in _NET_TISSUE:
        lo, hi = dom.get(_NET_TISSUE[k], (-np.inf, np.inf))
        v = float(sf.subject[k][0])
        if not lo <= v <= hi:
            return None, f"the fitted {k} {v:.2f} lies outside the network's domain {lo:g}-{hi:g}"
    return replace(sf, model=eqx.tree_at(lambda mm: mm.cond, m, sur)), "surrogate"


def _forward_model(base: Anatomy, s: SubjectFitSettings, fs: float, n: int, t_ms):
    """``(MUAP model, note)``: the conductor, or the network where ``s.forward`` asks for it and it
    serves (fat and skin held, or ``s.free_network``; the anatomy in its domain); ``note`` says
    which and why."""
    note = "conductor"
    if s.forward == "surrogate":
        if _free_tissue(s) and not s.free_network:
            note = ("conductor (fat and skin are fitted here: their ranges reach past the network's "
                    "fat 1-8 mm / skin 0.5-2 mm)")
        else:
            from ..errors import SurrogateMismatchError
            from ..surrogate import load_surrogate

            try:
                sur = load_surrogate(base, fs=fs, t_ms=t_ms, check_bounds=False)
                dom = sur.domain or {}
                if _free_tissue(s):
                    return sur, "surrogate (" + ", ".join(
                        f"{k} fitted within its domain {dom[_NET_TISSUE[k]][0]:g}-{dom[_NET_TISSUE[k]][1]:g} mm"
                        for k in _free_tissue(s)) + ")"
                return sur, "surrogate"
            except SurrogateMismatchError as e:
                note = f"conductor (the surrogate refused this anatomy: {e})"
    # 128-mm period across the fibres: half the cost of the default, MUAPs change by ~1e-3 (measured)
    return Conductor.from_anatomy(base, fs=fs, n_samples=n, period_x_mm=128.0).with_times(t_ms), note


def _fat_profile(model: FitModel, base: Anatomy, obs, w, ob: _Observed, s: SubjectFitSettings, seed: int,
                 progress: bool):
    """Step 4: fitted starts along fat thickness on the strongest units; returns the best start's
    (subject, all units' start), the profile, the chosen fat and a record of the starts.

    Fat trades against every unit's depth along a long, shallow valley that a local optimiser
    barely walks (measured: a free fit started at the base's 3 mm stayed at 3.2 mm for a 4.5-mm
    truth, while the profile loss was clearly lowest at 4.5 mm). Each start holds fat fixed; with
    fat held there is no valley to profile: one start.
    """
    L, m0 = base.layers, base.muscle
    fat_lo, fat_hi = float(model.sub_lo[0]), float(model.sub_hi[0])  # the fit's own range (the network's, if cut)
    iz_f0 = float(np.clip(m0.iz_fraction, 0.25, 0.75))
    fat_grid = [L.fat_thickness_mm * f for f in (1.0, 0.5, 1.5, 2.0, 0.25, 3.0)][:max(s.n_starts, 1)]
    if "fat_mm" in s.fix:
        fat_grid = fat_grid[:1]
    starts = [(float(np.clip(f_, fat_lo + 0.05, fat_hi - 0.05)), m0.fibre_length_mm)
              for f_ in fat_grid]
    sub_lo, sub_hi = np.asarray(model.sub_lo), np.asarray(model.sub_hi)
    ub_lo, ub_hi = np.asarray(model.unit_lo), np.asarray(model.unit_hi)
    key = jax.random.PRNGKey(seed)
    n = ob.tpl.muaps.shape[0]
    strong = np.sort(np.argsort(-ob.snr)[:min(s.start_units, n)])  # starts compared on the strongest units
    n_all = obs.shape[0]  # padded: fill the starts' unit set with padded units to a fixed size too
    want = min(s.start_units, n_all)
    strong = np.concatenate([strong, np.arange(n, n + max(want - len(strong), 0))]).astype(np.int64)
    results = []
    it = starts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(starts, desc="fit starts", leave=False)
    t_first = None
    for j, (fat0, len0) in enumerate(it):
        s_phys = np.array([fat0, L.skin_thickness_mm,
                           L.muscle_conductivity_longitudinal / L.muscle_conductivity_radial, 0.0, 0.0,
                           len0, m0.cv_mean_m_s, iz_f0], np.float32)
        if j == 0:
            s0 = jnp.asarray(to_unc(np.clip(s_phys, sub_lo, sub_hi), sub_lo, sub_hi))
            U0, _ = initial_units(model, s0, obs, w, jax.random.fold_in(key, j), s.n_bank, base)
            U_start = U0[strong]
        else:
            # continuation from the base start: same subject values but fat, every unit at the same
            # depth below the skin (so each profile point starts in its own valley, not from scratch)
            s_base, U_base = results[0][1]
            sb_phys = np.asarray(model.subject(s_base)).copy()
            sb_phys[0] = fat0
            s0 = jnp.asarray(to_unc(np.clip(sb_phys, sub_lo, sub_hi), sub_lo, sub_hi))
            v = np.asarray(to_phys(U_base, model.unit_lo, model.unit_hi)).copy()
            v[:, 0] = v[:, 0] + float(np.asarray(model.subject(s_base))[0]) - fat0
            U_start = jnp.asarray(to_unc(np.clip(v, ub_lo + 1e-3, ub_hi - 1e-3), ub_lo, ub_hi))
            U0 = results[0][2]
        tc = time.perf_counter()
        m_start = model
        if "fat_mm" not in s.fix and len(starts) > 1:
            m_start = eqx.tree_at(lambda m: (m.sub_fixed, m.sub_fixed_val), model,
                                  (model.sub_fixed.at[0].set(True), model.sub_fixed_val.at[0].set(s0[0])))
        # the base start begins from the bank and gets twice the iterations of the warm-started profile
        # points (two calls of the same compiled loop rather than a second compile)
        theta, losses = optimise((s0, U_start), m_start, obs[strong], w[strong], s.n_steps_start, s.optimiser, s.lr)
        if j == 0:
            theta, losses_b = optimise(theta, m_start, obs[strong], w[strong], s.n_steps_start, s.optimiser, s.lr)
            losses = jnp.concatenate([losses, losses_b])
        losses = np.asarray(losses)
        if t_first is None:
            t_first = time.perf_counter() - tc
        results.append((float(losses[-1]), theta, U0, losses))
    best = min(range(len(results)), key=lambda i: results[i][0])
    _, (s_b, U_b), U_init, hist = results[best]
    U_all = U_init.at[strong].set(U_b)
    profile = sorted((st_[0], r_[0]) for st_, r_ in zip(starts, results))
    fat_start = _parabola_minimum(profile, starts[best][0]) if "fat_mm" not in s.fix else starts[best][0]
    if "fat_mm" not in s.fix:
        s_b = s_b.at[0].set(float(to_unc(np.float32(fat_start), sub_lo[0], sub_hi[0])))
    record = {"starts_fat_length": starts, "start_final_losses": [r_[0] for r_ in results], "best_start": best,
              "fat_profile": [list(p_) for p_ in profile], "fat_start": fat_start, "n_starts": len(starts)}
    return (s_b, U_all), hist, record, t_first


def _parabola_minimum(profile, x_best: float) -> float:
    """Minimum of the parabola through the best profile point and its neighbours (or ``x_best``)."""
    k_b = [p_[0] for p_ in profile].index(x_best)
    if not 0 < k_b < len(profile) - 1:
        return x_best
    (x0, y0), (x1, y1), (x2, y2) = profile[k_b - 1:k_b + 2]
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    A_ = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    B_ = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / den
    return float(np.clip(-B_ / (2 * A_), x0, x2)) if A_ > 0 else x_best


def _population_means(model: FitModel, s, U, n_real: int, fix) -> jax.Array:
    """The population means enter only the weak prior, so the optimiser barely moves them; set them
    to their conditional optimum given the units (the means, for a flat hyperprior)."""
    lo_s, hi_s = np.asarray(model.sub_lo), np.asarray(model.sub_hi)
    subj_now = np.asarray(model.subject(s))
    ph_now = chunked(unit_outputs, model, s, U, UNIT_STEP)[1][:n_real]
    pop = subj_now.copy()
    pop[5] = ph_now[:, 5].mean()
    pop[6] = ph_now[:, 4].mean()
    pop[7] = (ph_now[:, 3] / ph_now[:, 5] + 0.5).mean()
    s_new = np.asarray(s).copy()
    for i in (5, 6, 7):
        if SUBJECT_NAMES[i] not in fix:
            s_new[i] = to_unc(np.clip(pop[i], lo_s[i], hi_s[i]), lo_s[i], hi_s[i])
    return jnp.asarray(s_new)


def _degenerate(s: SubjectFitSettings, fixed_phys, cov) -> list[str]:
    """Parameters fixed or tied because the data cannot determine them, and strongly correlated pairs."""
    ns = len(SUBJECT_NAMES)
    out = [
        "overall conductivity scale (sigma_r, sigma_fat, sigma_skin fixed at the base anatomy's values): "
        "trades exactly against MUAP amplitude",
        "grid offset across the fibres (fixed at 0): exactly degenerate with every unit's x",
        f"per-unit log gain tied by a N(0, {s.gain_prior_sd}^2) prior: degenerate with log fibres up to territory size",
    ] + [f"{k} fixed at {fixed_phys[SUBJECT_NAMES.index(k)]:.4g} (asked)" for k in s.fix]
    if cov is not None:
        sd = np.sqrt(np.clip(np.diag(cov[:ns, :ns]), 1e-30, None))
        corr = cov[:ns, :ns] / np.outer(sd, sd)
        for a_ in range(ns):
            for b_ in range(a_ + 1, ns):
                if abs(corr[a_, b_]) > 0.9:
                    out.append(f"{SUBJECT_NAMES[a_]} and {SUBJECT_NAMES[b_]} strongly correlated "
                               f"(r = {corr[a_, b_]:+.2f}): only their combination is determined")
    return out


def fit_subject(rec, decomposition, *, anatomy: Anatomy, settings: SubjectFitSettings | None = None,
                units=None, fixed_values: dict | None = None, seed: int = 0, progress: bool = True,
                source: str = "") -> SubjectFit:
    """Fit the subject-level forward model to a recording's observed MUAPs (see module docstring).

    Parameters
    ----------
    rec : Recording
        EMG [n_channels, n_samples] µV.
    decomposition : Decomposition
        Blind units of ``rec`` (e.g. ``bmiss.decompose(rec, "cbss")``).
    anatomy : Anatomy
        Base anatomy with the recording's grid (tissue starting values and bounds;
        :func:`bmiss.geometry.anatomy_for_recording`).
    settings : SubjectFitSettings
    units : sequence of int, optional
        Use these units of the decomposition instead of the confident-unit selection.
    fixed_values : dict name -> value, optional
        Values at which ``settings.fix`` holds parameters (default: the base anatomy's).
    seed : seed of the initial bank of MUAPs and of the noise-floor triggers.

    Returns
    -------
    SubjectFit

    Examples
    --------
    >>> sf = fit_subject(rec, dec, anatomy=base, settings=SubjectFitSettings(fix=("fat_mm",)))  # doctest: +SKIP
    >>> sf.subject["anisotropy"]  # (value, std)  # doctest: +SKIP
    """
    s = settings or SubjectFitSettings()
    base = anatomy
    t_all = time.perf_counter()
    timing = {}
    _check_fixed_values(base, fixed_values or {})
    dec = decomposition
    # 1. units
    idx = np.asarray(units, np.int64) if units is not None else select_units(
        dec, min_sil=s.min_sil, max_cov=s.max_cov, min_discharges=s.min_discharges)
    if len(idx) < 2:
        raise FitError(f"only {len(idx)} confident blind unit(s) (SIL >= {s.min_sil}, CoV <= {s.max_cov}, >= "
                       f"{s.min_discharges} discharges) of {dec.n_units}; a subject fit needs >= 2 (a longer or "
                       "stronger contraction, or a lower subject_fit.min_sil)")
    # 2. observed MUAPs
    t0 = time.perf_counter()
    ob = _observe(rec, dec, idx, base, s, seed)
    timing["templates"] = round(time.perf_counter() - t0, 2)
    # 3. model and data
    model, fixed_phys, forward = _build_model(base, ob, s, fixed_values or {})
    obs, w = observations(ob.tpl, ob.cmask)
    n = obs.shape[0]
    obs, w = _pad_units(obs, w, -(-n // UNIT_STEP) * UNIT_STEP)
    # 4. starts: the fat profile
    t_fit = time.perf_counter()
    theta, hist, record, t_first = _fat_profile(model, base, obs, w, ob, s, seed, progress)
    # 5. the joint fit on all units
    tc = time.perf_counter()
    (s_fit, U), losses2 = optimise(theta, model, obs, w, s.n_steps, s.optimiser, s.lr * 0.4)
    timing["final_stage"] = round(time.perf_counter() - tc, 2)
    edge = _at_network_edge(model, s_fit, base, s) if forward.startswith("surrogate") else None
    if edge is not None:
        sf = fit_subject(rec, decomposition, anatomy=anatomy, settings=s.replace(forward="conductor"), units=units,
                         fixed_values=fixed_values, seed=seed, progress=progress, source=source)
        sf.settings["forward_model"] = f"conductor ({edge})"
        sf.timing["network_fit_discarded"] = round(time.perf_counter() - t_all - sf.timing["total"], 2)
        return sf
    timing["fit"] = round(time.perf_counter() - t_fit, 2)
    timing["first_start_incl_compile"] = round(t_first, 2)
    s_fit = _population_means(model, s_fit, U, n, s.fix)
    # 6. outputs
    t0 = time.perf_counter()
    tpl, cmask = ob.tpl, ob.cmask
    T = tpl.muaps.shape[-1]
    model_m = chunked(unit_outputs, model, s_fit, U, UNIT_STEP)[0][:n]
    o = np.asarray(tpl.muaps)
    ev = explained_variance(o[:, cmask], model_m[:, cmask])
    r = o[:, cmask] - model_m[:, cmask]
    overall = float(1 - (r.astype(np.float64) ** 2).sum() / (o[:, cmask].astype(np.float64) ** 2).sum())
    chi2 = float(np.sum((np.asarray(w)[:n] * (o - model_m)) ** 2))
    ns = len(SUBJECT_NAMES)
    chi2_red = chi2 / max(int(cmask.sum()) * T * n - (ns + 8 * n), 1)
    keep = np.arange(ns + 8 * n)  # the subject and the real units (padded units last)
    phys_full, Jg = phys_and_jacobian(model, s_fit, U, UNIT_STEP)
    phys = phys_full[keep]
    cov = None
    std = np.full(phys.shape, np.nan)
    if s.laplace:
        cov_u = laplace(model, s_fit, U, obs, w, UNIT_STEP) * max(chi2_red, 1.0)
        cov = (Jg @ cov_u @ Jg.T)[np.ix_(keep, keep)]
        std = np.sqrt(np.clip(np.diag(cov), 0, None))
    timing["laplace"] = round(time.perf_counter() - t0, 2)
    subject = {k: (float(phys[i]), float(std[i])) for i, k in enumerate(SUBJECT_NAMES)}
    up, us = phys[ns:].reshape(n, 8), std[ns:].reshape(n, 8)
    timing["total"] = round(time.perf_counter() - t_all, 2)
    settings_rec = {"decimation": ob.q, "fit_fs_hz": tpl.fs, "fixed": list(s.fix), "optimiser": s.optimiser,
                    "start_units": s.start_units, "min_sil": s.min_sil, "max_cov": s.max_cov,
                    "min_discharges": s.min_discharges, "max_units": s.max_units,
                    "min_template_snr": s.min_template_snr, "band": s.band, "n_steps": s.n_steps,
                    "n_steps_start": s.n_steps_start, "lr": s.lr, "n_bank": s.n_bank,
                    "gain_prior_sd": s.gain_prior_sd, "prior_sd": list(s.prior_sd), "seed": seed,
                    "forward_model": forward, **record,
                    "n_blind_units": dec.n_units, "window_full_samples": list(ob.window_full)}
    return SubjectFit(anatomy=fitted_anatomy(base, subject, up), base=base, subject=subject, unit_index=ob.idx,
                      unit_params=up[:, :6], unit_std=us[:, :6], unit_gain=np.exp(up[:, 6]), unit_shift_ms=up[:, 7],
                      templates=tpl, model_muaps=model_m.astype(np.float32), explained_variance=ev,
                      overall_ev=overall, degenerate=_degenerate(s, fixed_phys, cov), timing=timing,
                      settings=settings_rec, channels_used=ob.chans, decomposition=dec,
                      loss_history=[float(v) for v in np.concatenate([hist, np.asarray(losses2)])[::10]],
                      chi2_reduced=chi2_red, source=source or str(rec.meta.get("source", "")), model=model,
                      theta_subject=s_fit, window_full=ob.window_full)
