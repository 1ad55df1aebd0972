"""Subject-specific model fitting: adapt the forward model's tissue and geometry to a recording.

Pipeline (``fit``):

1. **Blind units.** ``bmiss.api.decompose(rec, "cbss")``; keep the confident ones (SIL, CoV of ISI,
   number of discharges).
2. **Observed MUAPs.** Spike-triggered averages with a measured window and a per-sample noise
   std (:mod:`bmiss.templates`); units whose average is not clearly above its noise are dropped.
3. **Joint fit.** Subject-level parameters shared by every MU and per-unit parameters are fitted
   together by L-BFGS or Adam (Optax) through the differentiable conductor's expected-potential MUAP
   (:meth:`bmiss.conductor.Conductor.muap`), batched over units with ``vmap``; the model MUAP is
   band-passed exactly like the averages. Loss = weighted least squares with the noise std
   (``0.5 Σ ((obs - model) / σ)²``) + a Gaussian population prior tying each unit's fibre
   length, CV and IZ fraction to subject-level means (non-informative next to the data term
   wherever the MUAP determines them). Every parameter is bounded by a sigmoid map to a
   physiological range wider than the base anatomy's nominal values. Starts: a profile over fat
   thickness (fat held at 0.5-2x the base value, the other parameters fitted on the strongest units),
   the profile minimum (parabola) starts the free fit on all units (Optax L-BFGS by default).
4. **Uncertainty.** Laplace approximation: Gauss-Newton Hessian of the data term (exact
   Jacobians, ``jax.jacfwd`` per unit) + exact Hessian of the prior, over all parameters jointly;
   the covariance is scaled by the reduced χ² when the model does not fit to the noise level
   (model mismatch), then mapped to physical units (delta method).

Subject-level parameters (``SUBJECT_NAMES``) and what is tied or fixed:

* ``fat_mm``, ``skin_mm``: layer thicknesses.
* ``anisotropy``: σz/σr of the muscle. The overall conductivity scale is NOT identifiable from
  MUAP shapes (potential ∝ 1/σ at fixed shape): it trades against amplitude, so σr, σ_fat and
  σ_skin stay at the base anatomy's values and the amplitude goes into fibre counts / gains.
* ``rotation_deg``: grid rotation relative to the fibres (added to the base grid's).
* ``dz_mm``: grid offset along the fibres relative to the fibre midpoints (identified through the
  fibre-end components). The offset ACROSS the fibres is exactly degenerate with every unit's
  lateral position x, so it is fixed at 0 (the units' x carry it).
* ``length_pop_mm``, ``cv_pop_m_s``, ``izf_pop``: population means of fibre length, CV and IZ
  position (fraction of the fibre length), the centres of the population prior.

Per-unit parameters: ``bmiss.conductor.PARAM_NAMES`` (depth, x, log fibres, IZ, CV, length) plus
``log_gain`` and ``shift_ms``. ``log_gain`` (amplitude scale) is degenerate with log fibres up to
the territory-size effect; it is tied by a prior N(0, ``gain_prior_sd``²) so that amplitude goes
to the fibre count where the shape allows. ``shift_ms`` absorbs the lag between the blind
method's spike times and the discharge.

The fitted subject becomes an anatomy (``SubjectFit.anatomy``): layers, muscle means/spreads and
the grid placement, so ``Conductor.from_anatomy(fit.anatomy)`` is the fitted forward model.
Units: mm, m/s, ms, µV, S/m.
"""
from __future__ import annotations

from .errors import FitError  # noqa: F401  (re-exported)
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.signal

from . import anatomy as anatomy_mod
from .anatomy import Anatomy
from .conductor import PARAM_NAMES, Conductor, Tissue
from .io import Recording, atomic_write
from .io import json_default as _json_default
from .templates import Templates, explained_variance, spike_triggered_muaps

SUBJECT_NAMES = ("fat_mm", "skin_mm", "anisotropy", "rotation_deg", "dz_mm", "length_pop_mm", "cv_pop_m_s",
                 "izf_pop")
SUBJECT_UNITS = ("mm", "mm", "ratio", "deg", "mm", "mm", "m/s", "fraction of length")
UNIT_NAMES = PARAM_NAMES + ("log_gain", "shift_ms")




# ----------------------------------------------------------------------------- bounds
def subject_bounds(base: Anatomy) -> dict[str, tuple[float, float]]:
    """Physiological bounds of the subject-level parameters (wider than the base's nominal values)."""
    L = base.muscle.fibre_length_mm
    return {
        "fat_mm": (0.2, max(12.0, 2 * base.layers.fat_thickness_mm)),
        "skin_mm": (0.3, 3.0),
        "anisotropy": (1.5, 12.0),
        "rotation_deg": (-25.0, 25.0),
        "dz_mm": (-40.0, 40.0),
        "length_pop_mm": (20.0, max(250.0, 1.5 * L)),
        "cv_pop_m_s": (2.5, 6.5),
        "izf_pop": (0.2, 0.8),
    }


def unit_bounds(base: Anatomy) -> dict[str, tuple[float, float]]:
    """Bounds of the per-unit parameters. depth is below the fitted muscle surface; iz a fraction."""
    m = base.muscle
    return {
        "depth_below_mm": (0.3, m.thickness_mm + 5.0),
        "x_mm": (-(m.width_mm / 2 + 15.0), m.width_mm / 2 + 15.0),
        "log_fibres": (math.log(5.0), math.log(3000.0)),
        "iz_fraction": (0.1, 0.9),
        "cv_m_s": (2.0, 7.0),
        "length_mm": (20.0, 260.0),
        "log_gain": (-2.5, 2.5),
        "shift_ms": (-15.0, 15.0),
    }


def _to_phys(u, lo, hi):
    return lo + (hi - lo) * jax.nn.sigmoid(u)


def _to_unc(v, lo, hi):
    f = np.clip((np.asarray(v, np.float64) - lo) / (hi - lo), 1e-4, 1 - 1e-4)
    return np.log(f / (1 - f)).astype(np.float32)


# ----------------------------------------------------------------------------- model
class _Model(eqx.Module):
    """Everything static the loss needs (conductor, band filter, bounds, data)."""

    cond: Conductor
    sub_lo: jax.Array
    sub_hi: jax.Array
    unit_lo: jax.Array
    unit_hi: jax.Array
    base_rot: float = eqx.field(static=True)
    filt: jax.Array  # [F] real zero-phase response (|H|²), or ones
    sub_fixed: jax.Array  # [8] bool: subject parameters held at sub_fixed_val
    sub_fixed_val: jax.Array  # [8] unconstrained values of the fixed ones
    pad: int = eqx.field(static=True)
    nfft: int = eqx.field(static=True)
    T: int = eqx.field(static=True)
    sigma_r: float = eqx.field(static=True)
    sigma_fat: float = eqx.field(static=True)
    sigma_skin: float = eqx.field(static=True)
    prior_sd: tuple = eqx.field(static=True)  # (length frac, cv m/s, iz fraction, log gain)

    def subject(self, s):
        s = jnp.where(self.sub_fixed, self.sub_fixed_val, s)  # fixed parameters never move
        return _to_phys(s, self.sub_lo, self.sub_hi)

    def unit_phys(self, u, subj):
        """Per-unit physical [8]: PARAM_NAMES (absolute depth, iz in mm) + log_gain, shift_ms."""
        v = _to_phys(u, self.unit_lo, self.unit_hi)
        depth = subj[1] + subj[0] + v[0]
        iz = (v[3] - 0.5) * v[5]
        return jnp.stack([depth, v[1], v[2], iz, v[4], v[5], v[6], v[7]])

    def tissue(self, subj):
        dt = self.sub_lo.dtype
        f = lambda x: jnp.asarray(x, dt)  # noqa: E731
        return Tissue(skin_mm=subj[1], fat_mm=subj[0], sigma_skin=f(self.sigma_skin), sigma_fat=f(self.sigma_fat),
                      sigma_r=f(self.sigma_r), sigma_z=self.sigma_r * subj[2])

    def muaps(self, s, U):
        """Model MUAPs [n_units, C, T] (band-passed like the observations) for params (s [8], U [n, 8])."""
        subj = self.subject(s)
        cond = self.cond.placed(subj[3], subj[4])
        tis = self.tissue(subj)

        def one(u):
            ph = self.unit_phys(u, subj)
            m = cond.muap(ph[:6], ph[7], tis) * jnp.exp(ph[6])  # [C, T + 2 pad]
            mf = jnp.fft.irfft(jnp.fft.rfft(m, n=self.nfft, axis=-1) * self.filt, n=self.nfft, axis=-1)
            return mf[:, self.pad:self.pad + self.T]

        return jax.vmap(one)(U)

    def prior(self, s, U):
        subj = self.subject(s)
        ph = jax.vmap(lambda u: self.unit_phys(u, subj))(U)
        sdL, sdcv, sdiz, sdg = self.prior_sd
        zL = (ph[:, 5] - subj[5]) / (sdL * subj[5])
        zcv = (ph[:, 4] - subj[6]) / sdcv
        izf = ph[:, 3] / ph[:, 5] + 0.5
        ziz = (izf - subj[7]) / sdiz
        zg = ph[:, 6] / sdg
        return 0.5 * jnp.sum(zL**2 + zcv**2 + ziz**2 + zg**2)


def _residuals(model: _Model, s, U, obs, w):
    return (obs - model.muaps(s, U)) * w


def _loss(theta, model, obs, w):
    s, U = theta
    r = _residuals(model, s, U, obs, w)
    return 0.5 * jnp.sum(r**2) + model.prior(s, U)


@eqx.filter_jit
def _run_adam(theta, opt_state, model, obs, w, n_steps: int, lr: float):
    opt = optax.adam(lr)
    vg = jax.value_and_grad(_loss)

    def step(carry, _):
        th, st = carry
        val, g = vg(th, model, obs, w)
        upd, st = opt.update(g, st, th)
        return (optax.apply_updates(th, upd), st), val

    (theta, opt_state), losses = jax.lax.scan(step, (theta, opt_state), None, length=n_steps)
    return theta, opt_state, losses


@eqx.filter_jit
def _run_lbfgs(theta, model, obs, w, n_steps: int):
    opt = optax.lbfgs()
    fn = lambda th: _loss(th, model, obs, w)  # noqa: E731
    vg = optax.value_and_grad_from_state(fn)

    def step(carry, _):
        th, st = carry
        val, g = vg(th, state=st)
        upd, st = opt.update(g, st, th, value=val, grad=g, value_fn=fn)
        return (optax.apply_updates(th, upd), st), val

    (theta, _), losses = jax.lax.scan(step, (theta, opt.init(theta)), None, length=n_steps)
    return theta, losses


def _optimise(theta, model, obs, w, n_steps, optimiser, lr):
    if optimiser == "lbfgs":
        return _run_lbfgs(theta, model, obs, w, n_steps)
    if optimiser == "adam":
        th, _, losses = _run_adam(theta, optax.adam(lr).init(theta), model, obs, w, n_steps, lr)
        return th, losses
    raise ValueError(f"unknown optimiser {optimiser!r}; use 'lbfgs' or 'adam'")


# ----------------------------------------------------------------------------- result
@dataclass
class SubjectFit:
    """A fitted subject model.

    Attributes
    ----------
    anatomy : Anatomy
        The base anatomy with the fitted layers, muscle means/spreads and grid placement
        (``Conductor.from_anatomy(anatomy)`` is the fitted forward model; load it with ``--anatomy``
        after ``save_toml``).
    base : Anatomy
        The anatomy the fit started from (grid = the recording's).
    subject : dict name -> (value, std)
        Subject-level parameters (``SUBJECT_NAMES``) in physical units with Laplace std.
    unit_index : [n] int
        Index of each fitted unit in ``decomposition`` (the blind units kept).
    unit_params, unit_std : [n, 6] float
        Per-unit ``PARAM_NAMES`` (physical units) and their Laplace std.
    unit_gain, unit_shift_ms : [n] float
        Amplitude scale exp(log_gain) and time shift (ms) of each unit's model MUAP.
    templates : Templates
        Observed MUAPs (µV, band-passed) of the fitted units.
    model_muaps : [n, C, T] float32
        Fitted model MUAPs on the templates' window, band-passed like them.
    explained_variance : [n] float
        1 - ||obs - model||² / ||obs||² per unit (channels used).
    overall_ev : float
        The same pooled over all units.
    degenerate : list of str
        Parameters fixed or tied because the data cannot determine them, and strongly correlated pairs.
    timing : dict
        Seconds: decompose, templates, compile, fit, laplace, total.
    """

    anatomy: Anatomy
    base: Anatomy
    subject: dict
    unit_index: np.ndarray
    unit_params: np.ndarray
    unit_std: np.ndarray
    unit_gain: np.ndarray
    unit_shift_ms: np.ndarray
    templates: Templates
    model_muaps: np.ndarray
    explained_variance: np.ndarray
    overall_ev: float
    degenerate: list
    timing: dict
    settings: dict = field(default_factory=dict)
    channels_used: np.ndarray | None = None
    decomposition: object = None
    loss_history: list = field(default_factory=list)
    chi2_reduced: float = float("nan")
    source: str = ""
    model: object = field(default=None, repr=False)  # the fitted _Model (for fit_units)
    theta_subject: object = field(default=None, repr=False)  # unconstrained subject parameters [8]

    def conductor(self, **kw) -> Conductor:
        """The fitted forward model (``Conductor.from_anatomy(self.anatomy, **kw)``)."""
        return Conductor.from_anatomy(self.anatomy, **kw)

    def toml(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        head = [f"# Subject anatomy fitted by `bmiss fit` from {self.source or 'a recording'} at {when}",
                f"# base anatomy: {self.base.name} ({self.base.source or 'built in'}); {len(self.unit_index)} units; "
                f"explained variance of the observed MUAPs: {self.overall_ev:.3f}",
                "# fitted: " + ", ".join(f"{k} = {v[0]:.4g} +/- {v[1]:.2g}" for k, v in self.subject.items())]
        return "\n".join(head) + "\n" + anatomy_mod.to_toml(self.anatomy)

    def save_toml(self, path, *, force: bool = False) -> Path:
        text = self.toml()
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text), force=force)

    def report(self) -> dict:
        """JSON-able report: per-unit explained variance, parameters with std, timing, provenance."""
        units = []
        for i in range(len(self.unit_index)):
            u = {"unit": int(self.unit_index[i]), "explained_variance": float(self.explained_variance[i]),
                 "n_discharges": int(self.templates.n_discharges[i]), "gain": float(self.unit_gain[i]),
                 "shift_ms": float(self.unit_shift_ms[i])}
            for j, n in enumerate(PARAM_NAMES):
                u[n] = float(self.unit_params[i, j])
                u[n + "_std"] = float(self.unit_std[i, j])
            units.append(u)
        return {"source": self.source, "base_anatomy": self.base.name, "n_units": len(units),
                "overall_explained_variance": float(self.overall_ev),
                "median_unit_explained_variance": float(np.median(self.explained_variance)) if units else None,
                "chi2_reduced": float(self.chi2_reduced),
                "subject": {k: {"value": float(v[0]), "std": float(v[1]), "unit": SUBJECT_UNITS[SUBJECT_NAMES.index(k)]}
                            for k, v in self.subject.items()},
                "degenerate_or_fixed": self.degenerate, "units": units,
                "window_samples": list(self.templates.window), "band_hz": self.templates.band,
                "timing_s": self.timing, "settings": self.settings, "provenance": provenance()}

    def save_report(self, path, *, force: bool = False, extra: dict | None = None) -> Path:
        doc = self.report()
        if extra:
            doc.update(extra)
        text = json.dumps(doc, indent=1, default=_json_default)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text), force=force)




from .files import provenance  # noqa: E402,F401  (re-exported: one home, bmiss.files)


# ----------------------------------------------------------------------------- helpers
def _band_response(nfft: int, fs: float, band) -> np.ndarray:
    """|H(f)|² of the zero-phase 4th-order Butterworth band-pass of ``templates`` on an rfft grid."""
    f = np.fft.rfftfreq(nfft, 1 / fs)
    if band is None:
        return np.ones_like(f, np.float32)
    lo, hi = band
    sos = scipy.signal.butter(4, (lo, min(hi, 0.45 * fs)), btype="bandpass", fs=fs, output="sos")
    _, h = scipy.signal.sosfreqz(sos, worN=f, fs=fs)
    return (np.abs(h) ** 2).astype(np.float32)


def _decimate(tpl: Templates) -> tuple[Templates, int]:
    """Band-limited averages (<= band[1] Hz) lose nothing at ~2 kHz, and the model's cost grows with
    the samples: keep every q-th sample (q = fs // 2048 where the band allows). Returns (tpl, q)."""
    fs = tpl.fs
    q = int(fs // 2048) if tpl.band is not None and tpl.band[1] * 3 <= fs / max(int(fs // 2048), 1) else 1
    if q <= 1:
        return tpl, 1
    r0 = tpl.onset % q
    n = len(range(r0, tpl.muaps.shape[-1], q))
    return Templates(muaps=tpl.muaps[..., r0::q].copy(), noise_std=tpl.noise_std[..., r0::q].copy(),
                     onset=tpl.onset // q, window=(-(tpl.onset // q), -(tpl.onset // q) + n),
                     support=tpl.support // q, n_discharges=tpl.n_discharges, fs=fs / q, band=tpl.band,
                     truncated=tpl.truncated), q


def _data(tpl: Templates, cmask: np.ndarray):
    """Observations [n, C, T] and their weights 1/σ (0 on unused channels); σ has a floor of 1e-3 of
    each unit's peak so that noiseless averages keep finite weights."""
    floor = 1e-3 * np.abs(tpl.muaps).max(axis=(1, 2), keepdims=True)
    sig = np.sqrt(tpl.noise_std.astype(np.float64) ** 2 + floor**2)
    return (jnp.asarray(tpl.muaps, jnp.float32),
            jnp.asarray((cmask[None, :, None] / np.maximum(sig, 1e-30)).astype(np.float32)))


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


def _initial_units(model: _Model, s0, obs, w, key, n_bank: int, base: Anatomy):
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
    Ub = jnp.asarray(_to_unc(V, lo, hi))
    bank = np.asarray(jax.lax.map(lambda u: model.muaps(s0, u[None])[0], Ub, batch_size=32))  # [B, C, T]
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
    return jnp.asarray(_to_unc(U0, lo, hi)), best


def _laplace(model: _Model, s, U, obs, w):
    """Covariance of all unconstrained parameters [(8 + 8n)²] (Gauss-Newton data + exact prior Hessian)."""
    n = U.shape[0]
    ns = s.shape[0]

    def r_unit(su, o, ww):
        s_, u_ = su[:ns], su[ns:]
        return ((o - model.muaps(s_, u_[None])[0]) * ww).ravel()

    def jac_unit(u, o, ww):
        return jax.jacfwd(r_unit)(jnp.concatenate([s, u]), o, ww)  # [R, ns + 8]

    J = jax.lax.map(lambda a: jac_unit(*a), (U, obs, w))  # [n, R, ns + 8]
    J = np.asarray(J, np.float64)
    H = np.zeros((ns + 8 * n, ns + 8 * n))
    for i in range(n):
        Js, Ju = J[i][:, :ns], J[i][:, ns:]
        sl = slice(ns + 8 * i, ns + 8 * (i + 1))
        H[:ns, :ns] += Js.T @ Js
        H[:ns, sl] += Js.T @ Ju
        H[sl, :ns] += Ju.T @ Js
        H[sl, sl] += Ju.T @ Ju
    flat = jnp.concatenate([s, U.ravel()])
    prior_h = jax.hessian(lambda f: model.prior(f[:ns], f[ns:].reshape(n, 8)))(flat)
    H += np.asarray(prior_h, np.float64)
    H += 1e-6 * np.eye(H.shape[0])  # parameters the data never touch stay finite (and huge)
    return np.linalg.pinv(H, hermitian=True)


def _phys_all(model: _Model, flat, ns, n):
    s, U = flat[:ns], flat[ns:].reshape(n, 8)
    subj = model.subject(s)
    ph = jax.vmap(lambda u: model.unit_phys(u, subj))(U)
    return jnp.concatenate([subj, ph.ravel()])


# ----------------------------------------------------------------------------- public
def fit(rec: Recording, *, anatomy=None, electrode=None, decomposition=None, units=None,
        min_sil: float = 0.85, max_cov: float = 0.4, min_discharges: int = 30, max_units: int = 30,
        min_template_snr: float = 10.0, band=(20.0, 500.0), n_starts: int = 4, n_steps: int = 100,
        n_steps_start: int = 40, lr: float = 0.05, n_bank: int = 256, start_units: int = 8,
        optimiser: str = "lbfgs", gain_prior_sd: float = 0.5,
        prior_sd=(0.1, 0.5, 0.1), seed: int = 0, laplace: bool = True, progress: bool = True,
        fix=(), fixed_values: dict | None = None,
        source: str = "") -> SubjectFit:
    """Fit the subject-level forward model to a recording's observed MUAPs.

    Parameters
    ----------
    rec : Recording
        EMG [n_channels, n_samples] µV with a known electrode grid.
    anatomy : str | Path | Anatomy, optional
        Base anatomy (tissue starting values and bounds); default: a simulation's nominal anatomy
        or ``biceps_brachii``. Its grid becomes the recording's (``electrode`` = grid code).
    decomposition : Decomposition, optional
        Blind units to use (default: ``bmiss.api.decompose(rec, "cbss", progress=False)``).
    units : sequence of int, optional
        Use these units of the decomposition instead of the confident-unit selection.
    min_sil, max_cov, min_discharges : unit selection (SIL, CoV of ISI, discharges).
    max_units : keep at most this many units (the highest template SNR).
    min_template_snr : drop units whose template energy is below this multiple of its noise energy.
    band : (lo, hi) Hz band-pass of the averages (the model is filtered the same way) or None.
    n_starts, n_steps_start, n_steps : starts (a profile over fat, each with fat held), iterations per start (on the
        ``start_units`` strongest units), iterations of the best start on all units.
    optimiser : "lbfgs" (Optax L-BFGS with zoom line search, default) or "adam" (learning rate ``lr``).
    gain_prior_sd : std of the per-unit log amplitude gain (ties gain against log fibres).
    prior_sd : population prior (fibre length as a fraction of the mean, CV m/s, IZ fraction).
    seed : seed of the initial bank of MUAPs and of the noise-floor triggers.
    fix : subject parameters (``SUBJECT_NAMES``) to hold at the base anatomy's value (or at
        ``fixed_values[name]``), e.g. ``fix=("anisotropy",)`` when it is known.

    Returns
    -------
    SubjectFit
    """
    from . import api, electrodes

    t_all = time.perf_counter()
    timing = {}
    if isinstance(anatomy, Anatomy):
        base = anatomy
    else:
        base = electrodes.anatomy_for_recording(rec, anatomy, electrode=electrode)
    sb0 = subject_bounds(base)
    for k, v in (fixed_values or {}).items():  # before any work
        if k not in SUBJECT_NAMES:
            raise FitError(f"fixed_values: unknown subject parameter {k!r}; choose from {SUBJECT_NAMES}")
        if not sb0[k][0] <= float(v) <= sb0[k][1]:
            raise FitError(f"{k} = {v} is outside the physiological range {sb0[k]} "
                           f"({SUBJECT_UNITS[SUBJECT_NAMES.index(k)]})")
    # 1. blind units
    t0 = time.perf_counter()
    dec = decomposition if decomposition is not None else api.decompose(rec, "cbss", progress=False, seed=seed)
    timing["decompose"] = round(time.perf_counter() - t0, 2)
    idx = np.asarray(units, np.int64) if units is not None else select_units(
        dec, min_sil=min_sil, max_cov=max_cov, min_discharges=min_discharges)
    if len(idx) < 2:
        raise FitError(f"only {len(idx)} confident blind unit(s) (SIL >= {min_sil}, CoV <= {max_cov}, >= "
                       f"{min_discharges} discharges) of {dec.n_units}; a subject fit needs >= 2 (a longer or "
                       "stronger contraction, or lower --min-sil)")
    # 2. observed MUAPs
    t0 = time.perf_counter()
    tpl = spike_triggered_muaps(rec.emg, [dec.spikes[i] for i in idx], rec.fs, band=band, seed=seed)
    chans = np.asarray(dec.meta.get("channels_used", range(rec.n_channels)), np.int64)
    cmask = np.zeros(rec.n_channels, bool)
    cmask[chans] = True
    snr = ((tpl.muaps[:, cmask] ** 2).sum((1, 2)) /
           np.maximum((tpl.noise_std[:, cmask] ** 2).sum((1, 2)), 1e-30))
    order = np.argsort(-snr)
    order = order[snr[order] >= min_template_snr][:max_units]
    if len(order) < 2:
        raise FitError(f"only {len(order)} unit(s) with a MUAP average >= {min_template_snr}x its noise energy; "
                       "cannot fit a subject model")
    order = np.sort(order)
    # the common window of the kept units only (weak units' supports are noise and would widen it)
    w0 = int(max(min(tpl.support[order, 0].min(), 0), tpl.window[0]))
    w1 = int(min(max(tpl.support[order, 1].max(), 1), tpl.window[1]))
    sl = slice(w0 - tpl.window[0], w1 - tpl.window[0])
    tpl = Templates(muaps=tpl.muaps[order][..., sl], noise_std=tpl.noise_std[order][..., sl], onset=-w0,
                    window=(w0, w1), support=tpl.support[order], n_discharges=tpl.n_discharges[order], fs=tpl.fs,
                    band=tpl.band, truncated=tpl.truncated[order])
    idx = idx[order]
    window_full = (w0, w1)
    tpl, q = _decimate(tpl)
    fs = tpl.fs
    timing["templates"] = round(time.perf_counter() - t0, 2)
    n, C, T = tpl.muaps.shape
    if C != base.grid.n_channels:
        raise FitError(f"the recording has {C} channels but the anatomy's grid {base.grid.n_channels}; "
                       "pass --electrode CODE (or an anatomy with the recording's grid)")

    # 3. model and data
    pad = 16
    t_ms = (np.arange(-pad, T + pad) - tpl.onset) / fs * 1e3
    # 128-mm period across the fibres: half the cost of the default, MUAPs change by ~1e-3 (measured)
    cond = Conductor.from_anatomy(base, fs=fs, n_samples=T + 2 * pad, period_x_mm=128.0).with_times(t_ms)
    nfft = int(2 ** np.ceil(np.log2(T + 2 * pad)))
    sb, ub = subject_bounds(base), unit_bounds(base)
    L = base.layers
    fixed = tuple(fix or ())
    bad = [k for k in fixed if k not in SUBJECT_NAMES]
    if bad:
        raise ValueError(f"fix: unknown subject parameter(s) {bad}; choose from {SUBJECT_NAMES}")
    lo_s = np.array([sb[k][0] for k in SUBJECT_NAMES], np.float32)
    hi_s = np.array([sb[k][1] for k in SUBJECT_NAMES], np.float32)
    nominal = {"fat_mm": L.fat_thickness_mm, "skin_mm": L.skin_thickness_mm,
               "anisotropy": L.muscle_conductivity_longitudinal / L.muscle_conductivity_radial,
               "rotation_deg": 0.0, "dz_mm": 0.0, "length_pop_mm": base.muscle.fibre_length_mm,
               "cv_pop_m_s": base.muscle.cv_mean_m_s, "izf_pop": base.muscle.iz_fraction}
    nominal.update({k: float(v) for k, v in (fixed_values or {}).items()})
    fixed_phys = np.array([nominal[k] for k in SUBJECT_NAMES], np.float32)
    model = _Model(cond=cond, sub_lo=jnp.asarray([sb[k][0] for k in SUBJECT_NAMES], jnp.float32),
                   sub_hi=jnp.asarray([sb[k][1] for k in SUBJECT_NAMES], jnp.float32),
                   unit_lo=jnp.asarray([v[0] for v in ub.values()], jnp.float32),
                   unit_hi=jnp.asarray([v[1] for v in ub.values()], jnp.float32),
                   base_rot=float(base.grid.rotation_deg), filt=jnp.asarray(_band_response(nfft, fs, tpl.band)),
                   sub_fixed=jnp.asarray([k in fixed for k in SUBJECT_NAMES]),
                   sub_fixed_val=jnp.asarray(_to_unc(np.clip(fixed_phys, lo_s, hi_s), lo_s, hi_s)),
                   pad=pad, nfft=nfft, T=T, sigma_r=float(L.muscle_conductivity_radial),
                   sigma_fat=float(L.fat_conductivity), sigma_skin=float(L.skin_conductivity),
                   prior_sd=(float(prior_sd[0]), float(prior_sd[1]), float(prior_sd[2]), float(gain_prior_sd)))
    obs, w = _data(tpl, cmask)

    m0 = base.muscle
    iz_f0 = float(np.clip(m0.iz_fraction, 0.25, 0.75))
    # Starts: a profile over fat thickness. Fat trades against every unit's depth along a long, shallow
    # valley that a local optimiser barely walks (measured: a free fit started at the base's 3 mm stayed at
    # 3.2 mm for a 4.5-mm truth, while the profile loss was clearly lowest at 4.5 mm). Each start holds
    # fat fixed, the best profile point (refined by a parabola) starts the free fit on all units.
    # (with fat held there is no valley to profile: one start)
    fat_grid = [L.fat_thickness_mm * f for f in (1.0, 0.5, 1.5, 2.0, 0.25, 3.0)][:max(n_starts, 1)]
    if "fat_mm" in fixed:
        fat_grid = fat_grid[:1]
    starts = [(float(np.clip(f_, sb["fat_mm"][0] + 0.05, sb["fat_mm"][1] - 0.05)), m0.fibre_length_mm)
              for f_ in fat_grid]
    sub_lo, sub_hi = np.asarray(model.sub_lo), np.asarray(model.sub_hi)
    key = jax.random.PRNGKey(seed)
    # starts are compared on the strongest units only (cheap); the best is then fitted on all units
    strong = np.sort(np.argsort(-snr[order])[:min(start_units, n)])
    results = []
    t_fit = time.perf_counter()
    it = starts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(starts, desc="fit starts", leave=False)
    U_all = None
    t_first = None
    ub_lo, ub_hi = np.asarray(model.unit_lo), np.asarray(model.unit_hi)
    for j, (fat0, len0) in enumerate(it):
        s_phys = np.array([fat0, L.skin_thickness_mm,
                           L.muscle_conductivity_longitudinal / L.muscle_conductivity_radial, 0.0, 0.0,
                           len0, m0.cv_mean_m_s, iz_f0], np.float32)
        if j == 0:
            s0 = jnp.asarray(_to_unc(np.clip(s_phys, sub_lo, sub_hi), sub_lo, sub_hi))
            U0, _ = _initial_units(model, s0, obs, w, jax.random.fold_in(key, j), n_bank, base)
            U_start = U0[strong]
        else:
            # continuation from the base start: same subject values but fat, every unit at the same
            # depth below the skin (so each profile point starts in its own valley, not from scratch)
            s_base, U_base = results[0][1]
            sb_phys = np.asarray(model.subject(s_base)).copy()
            sb_phys[0] = fat0
            s0 = jnp.asarray(_to_unc(np.clip(sb_phys, sub_lo, sub_hi), sub_lo, sub_hi))
            v = np.asarray(_to_phys(U_base, model.unit_lo, model.unit_hi)).copy()
            v[:, 0] = v[:, 0] + float(np.asarray(model.subject(s_base))[0]) - fat0
            U_start = jnp.asarray(_to_unc(np.clip(v, ub_lo + 1e-3, ub_hi - 1e-3), ub_lo, ub_hi))
            U0 = results[0][2]
        tc = time.perf_counter()
        m_start = model
        if "fat_mm" not in fixed and len(starts) > 1:
            m_start = eqx.tree_at(lambda m: (m.sub_fixed, m.sub_fixed_val), model,
                                  (model.sub_fixed.at[0].set(True), model.sub_fixed_val.at[0].set(s0[0])))
        # the base start begins from the bank and gets twice the iterations of the warm-started profile
        # points (two calls of the same compiled loop rather than a second compile)
        theta, losses = _optimise((s0, U_start), m_start, obs[strong], w[strong], n_steps_start, optimiser, lr)
        if j == 0:
            theta, losses_b = _optimise(theta, m_start, obs[strong], w[strong], n_steps_start, optimiser, lr)
            losses = jnp.concatenate([losses, losses_b])
        losses = np.asarray(losses)
        if t_first is None:
            t_first = time.perf_counter() - tc
        results.append((float(losses[-1]), theta, U0, losses))
    best = min(range(len(results)), key=lambda i: results[i][0])
    _, (s_b, U_b), U_init, hist = results[best]
    U_all = U_init.at[strong].set(U_b)
    profile = sorted((st_[0], r_[0]) for st_, r_ in zip(starts, results))
    fat_start = starts[best][0]
    k_b = [p_[0] for p_ in profile].index(fat_start)
    if "fat_mm" not in fixed and 0 < k_b < len(profile) - 1:
        (x0, y0), (x1, y1), (x2, y2) = profile[k_b - 1:k_b + 2]
        den = (x0 - x1) * (x0 - x2) * (x1 - x2)
        A_ = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
        B_ = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / den
        if A_ > 0:
            fat_start = float(np.clip(-B_ / (2 * A_), x0, x2))
    if "fat_mm" not in fixed:
        s_b = s_b.at[0].set(float(_to_unc(np.float32(fat_start), sub_lo[0], sub_hi[0])))
    tc = time.perf_counter()
    theta, losses2 = _optimise((s_b, U_all), model, obs, w, n_steps, optimiser, lr * 0.4)
    losses2 = np.asarray(losses2)
    timing["final_stage"] = round(time.perf_counter() - tc, 2)
    timing["fit"] = round(time.perf_counter() - t_fit, 2)
    timing["first_start_incl_compile"] = round(t_first, 2)
    s, U = theta
    # The population means enter only the weak prior, so the optimiser barely moves them; set them to
    # their conditional optimum given the units (the means, for a flat hyperprior).
    subj_now = np.asarray(model.subject(s))
    ph_now = np.asarray(jax.vmap(lambda u: model.unit_phys(u, jnp.asarray(subj_now)))(U))
    pop = subj_now.copy()
    pop[5] = ph_now[:, 5].mean()
    pop[6] = ph_now[:, 4].mean()
    pop[7] = (ph_now[:, 3] / ph_now[:, 5] + 0.5).mean()
    s_new = np.asarray(s).copy()
    for i in (5, 6, 7):
        if SUBJECT_NAMES[i] not in fixed:
            s_new[i] = _to_unc(np.clip(pop[i], lo_s[i], hi_s[i]), lo_s[i], hi_s[i])
    s = jnp.asarray(s_new)

    # 4. outputs
    t0 = time.perf_counter()
    model_m = np.asarray(model.muaps(s, U))
    o = np.asarray(tpl.muaps)
    ev = explained_variance(o[:, cmask], model_m[:, cmask])
    r = o[:, cmask] - model_m[:, cmask]
    overall = float(1 - (r.astype(np.float64) ** 2).sum() / (o[:, cmask].astype(np.float64) ** 2).sum())
    chi2 = float(np.sum((np.asarray(w) * (o - model_m)) ** 2))
    dof = max(int(cmask.sum()) * T * n - (len(SUBJECT_NAMES) + 8 * n), 1)
    chi2_red = chi2 / dof
    ns = len(SUBJECT_NAMES)
    flat = jnp.concatenate([s, U.ravel()])
    phys = np.asarray(_phys_all(model, flat, ns, n), np.float64)
    if laplace:
        cov_u = _laplace(model, s, U, obs, w) * max(chi2_red, 1.0)
        Jg = np.asarray(jax.jacfwd(lambda f: _phys_all(model, f, ns, n))(flat), np.float64)
        cov = Jg @ cov_u @ Jg.T
        std = np.sqrt(np.clip(np.diag(cov), 0, None))
    else:
        cov = None
        std = np.full(phys.shape, np.nan)
    timing["laplace"] = round(time.perf_counter() - t0, 2)
    subj_v, subj_s = phys[:ns], std[:ns]
    up = phys[ns:].reshape(n, 8)
    us = std[ns:].reshape(n, 8)
    subject = {k: (float(subj_v[i]), float(subj_s[i])) for i, k in enumerate(SUBJECT_NAMES)}
    subject["rotation_deg"] = (subject["rotation_deg"][0], subject["rotation_deg"][1])

    degenerate = [
        "overall conductivity scale (sigma_r, sigma_fat, sigma_skin fixed at the base anatomy's values): "
        "trades exactly against MUAP amplitude",
        "grid offset across the fibres (fixed at 0): exactly degenerate with every unit's x",
        f"per-unit log gain tied by a N(0, {gain_prior_sd}^2) prior: degenerate with log fibres up to territory size",
    ] + [f"{k} fixed at {fixed_phys[SUBJECT_NAMES.index(k)]:.4g} (asked)" for k in fixed]
    if cov is not None:
        sd = np.sqrt(np.clip(np.diag(cov[:ns, :ns]), 1e-30, None))
        corr = cov[:ns, :ns] / np.outer(sd, sd)
        for a_ in range(ns):
            for b_ in range(a_ + 1, ns):
                if abs(corr[a_, b_]) > 0.9:
                    degenerate.append(f"{SUBJECT_NAMES[a_]} and {SUBJECT_NAMES[b_]} strongly correlated "
                                      f"(r = {corr[a_, b_]:+.2f}): only their combination is determined")
    fitted = _fitted_anatomy(base, subject, up)
    timing["total"] = round(time.perf_counter() - t_all, 2)
    settings = {"decimation": q, "fit_fs_hz": fs, "fixed": list(fixed), "optimiser": optimiser, "start_units": start_units, "min_sil": min_sil, "max_cov": max_cov, "min_discharges": min_discharges, "max_units": max_units,
                "min_template_snr": min_template_snr, "band": band, "n_starts": len(starts), "n_steps": n_steps,
                "n_steps_start": n_steps_start, "lr": lr, "n_bank": n_bank, "gain_prior_sd": gain_prior_sd,
                "prior_sd": list(prior_sd), "seed": seed, "starts_fat_length": starts,
                "start_final_losses": [r_[0] for r_ in results], "best_start": best,
                "fat_profile": [list(p_) for p_ in profile], "fat_start": fat_start, "n_blind_units": dec.n_units,
                "window_full_samples": list(window_full)}
    return SubjectFit(anatomy=fitted, base=base, subject=subject, unit_index=idx, unit_params=up[:, :6],
                      unit_std=us[:, :6], unit_gain=np.exp(up[:, 6]), unit_shift_ms=up[:, 7], templates=tpl,
                      model_muaps=model_m.astype(np.float32), explained_variance=ev, overall_ev=overall,
                      degenerate=degenerate, timing=timing, settings=settings, channels_used=chans, decomposition=dec,
                      loss_history=[float(v) for v in np.concatenate([hist, losses2])[::10]], chi2_reduced=chi2_red,
                      source=source or str(rec.meta.get("source", "")), model=model, theta_subject=s)


@dataclass
class UnitFit:
    """Per-unit MU properties under a fitted subject model (:func:`fit_units`).

    Attributes
    ----------
    params, std : [n_units, 6] float
        ``PARAM_NAMES`` (mm, mm, ln fibres, mm, m/s, mm) and Laplace std; NaN where not fitted.
    gain, shift_ms : [n_units] float
        Amplitude scale of the model MUAP and its time shift (ms); NaN where not fitted.
    explained_variance : [n_units] float
        1 - ||obs - model||² / ||obs||² of each unit's observed MUAP (NaN where not fitted).
    status : list of str
        ``"fitted"``, ``"few discharges"`` or ``"weak average"`` per unit.
    timing : dict
        Seconds: templates, fit, laplace, total.
    """

    params: np.ndarray
    std: np.ndarray
    gain: np.ndarray
    shift_ms: np.ndarray
    explained_variance: np.ndarray
    status: list
    timing: dict


def fit_units(sf: SubjectFit, rec: Recording, spikes: list, *, n_steps: int = 100, n_bank: int = 256,
              min_discharges: int = 10, min_template_snr: float = 3.0, laplace: bool = True, seed: int = 0,
              pad_to: int = 8) -> UnitFit:
    """Fit every unit's properties to its own observed MUAP with the subject held at ``sf``.

    The MUAP of each unit (spike-triggered average over the subject fit's window) is fitted by
    L-BFGS through the fitted subject's conductor: depth, x, fibre count (amplitude informs size,
    the gain is tied by its prior), IZ, CV, length, gain and shift; the population prior of the
    subject fit ties length, CV and IZ weakly to the subject's means. Units are padded to a
    multiple of ``pad_to`` so that recordings with similar unit counts share one compilation.

    Parameters
    ----------
    sf : SubjectFit
        A fitted subject (:func:`fit`) of the same recording.
    rec : Recording
    spikes : list of int arrays
        Discharge samples of the units to fit (e.g. a decomposition's ``spikes``).
    min_discharges, min_template_snr : units with fewer discharges, or whose average has less energy
        than this multiple of its noise energy, are not fitted (NaN, with the reason in ``status``).

    Returns
    -------
    UnitFit

    Examples
    --------
    >>> sf = fit(rec, decomposition=dec)  # doctest: +SKIP
    >>> uf = fit_units(sf, rec, dec.spikes)  # doctest: +SKIP
    >>> uf.params[:, 0]  # depth of every unit, mm  # doctest: +SKIP
    """
    if sf.model is None or sf.theta_subject is None:
        raise ValueError("this SubjectFit carries no model (it was loaded, not fitted); run bmiss.fit.fit first")
    t_all = time.perf_counter()
    n_all = len(spikes)
    params = np.full((n_all, 6), np.nan)
    std = np.full((n_all, 6), np.nan)
    gain, shift, ev = (np.full(n_all, np.nan) for _ in range(3))
    status = ["few discharges"] * n_all
    timing = {}
    w0, w1 = sf.settings["window_full_samples"]
    # the averages' own rule for a usable discharge (a full search window inside the recording)
    lo_ok = max(int(np.ceil(20.0e-3 * rec.fs)), -int(w0))
    hi_ok = max(int(np.ceil(80.0e-3 * rec.fs)), int(w1))
    ok = [i for i, sp in enumerate(spikes)
          if np.sum((np.asarray(sp) - lo_ok >= 0) & (np.asarray(sp) + hi_ok <= rec.n_samples)) >= min_discharges]
    if not ok:
        return UnitFit(params, std, gain, shift, ev, status, {"total": 0.0})
    t0 = time.perf_counter()
    tpl = spike_triggered_muaps(rec.emg, [spikes[i] for i in ok], rec.fs, band=sf.templates.band,
                                window=(int(w0), int(w1)), min_discharges=min_discharges,
                                seed=seed)
    tpl, _ = _decimate(tpl)
    model = sf.model
    if tpl.muaps.shape[-1] != model.T:
        raise ValueError(f"unit averages have {tpl.muaps.shape[-1]} samples but the subject model {model.T}")
    cmask = np.zeros(rec.n_channels, bool)
    cmask[np.asarray(sf.channels_used if sf.channels_used is not None else range(rec.n_channels))] = True
    snr = ((tpl.muaps[:, cmask] ** 2).sum((1, 2)) / np.maximum((tpl.noise_std[:, cmask] ** 2).sum((1, 2)), 1e-30))
    keep = np.flatnonzero(snr >= min_template_snr)
    for k in np.flatnonzero(snr < min_template_snr):
        status[ok[k]] = "weak average"
    timing["templates"] = round(time.perf_counter() - t0, 2)
    if len(keep) == 0:
        timing["total"] = round(time.perf_counter() - t_all, 2)
        return UnitFit(params, std, gain, shift, ev, status, timing)
    obs, w = _data(replace(tpl, muaps=tpl.muaps[keep], noise_std=tpl.noise_std[keep]), cmask)
    n = len(keep)
    n_pad = int(np.ceil(n / pad_to) * pad_to) - n
    if n_pad:  # padded units carry zero weight: they neither pull nor change the compiled shapes
        obs = jnp.concatenate([obs, jnp.zeros((n_pad,) + obs.shape[1:], obs.dtype)])
        w = jnp.concatenate([w, jnp.zeros((n_pad,) + w.shape[1:], w.dtype)])
    s = jnp.asarray(sf.theta_subject)
    held = eqx.tree_at(lambda m: (m.sub_fixed, m.sub_fixed_val), model,
                       (jnp.ones_like(model.sub_fixed), jnp.where(model.sub_fixed, model.sub_fixed_val, s)))
    t0 = time.perf_counter()
    U0, _ = _initial_units(held, s, obs, w, jax.random.PRNGKey(seed + 1), n_bank, sf.base)
    (_, U), _ = _optimise((s, U0), held, obs, w, n_steps, "lbfgs", 0.02)
    U = U[:n]
    m_fit = np.asarray(held.muaps(s, U))
    o = np.asarray(obs[:n])
    e = explained_variance(o[:, cmask], m_fit[:, cmask])
    subj = held.subject(s)
    ph = np.asarray(jax.vmap(lambda u: held.unit_phys(u, subj))(U), np.float64)
    timing["fit"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    if laplace:
        sd = np.asarray(_unit_laplace(held, s, U, obs[:n], w[:n]), np.float64)
    else:
        sd = np.full((n, 8), np.nan)
    timing["laplace"] = round(time.perf_counter() - t0, 2)
    for j, k in enumerate(keep):
        i = ok[k]
        params[i], std[i] = ph[j, :6], sd[j, :6]
        gain[i], shift[i], ev[i] = math.exp(ph[j, 6]), ph[j, 7], e[j]
        status[i] = "fitted"
    timing["total"] = round(time.perf_counter() - t_all, 2)
    return UnitFit(params, std, gain, shift, ev, status, timing)


def _unit_laplace(model: _Model, s, U, obs, w):
    """Physical std [n, 8] of each unit's parameters with the subject held (the Hessian is block
    diagonal then: Gauss-Newton data term + the unit's prior), scaled by the unit's reduced χ²."""

    def one(u, o, ww):
        r = lambda v: ((o - model.muaps(s, v[None])[0]) * ww).ravel()  # noqa: E731
        J = jax.jacfwd(r)(u)
        H = J.T @ J + jax.hessian(lambda v: model.prior(s, v[None]))(u) + 1e-6 * jnp.eye(u.shape[0])
        res = r(u)
        dof = jnp.maximum(jnp.sum(ww > 0) - u.shape[0], 1)
        chi2 = jnp.maximum(jnp.sum(res**2) / dof, 1.0)
        cov = jnp.linalg.pinv(H, hermitian=True) * chi2
        G = jax.jacfwd(lambda v: model.unit_phys(v, model.subject(s)))(u)
        return jnp.sqrt(jnp.clip(jnp.diag(G @ cov @ G.T), 0.0, None))

    return jax.lax.map(lambda a: one(*a), (U, obs, w))


def _fitted_anatomy(base: Anatomy, subject: dict, up: np.ndarray) -> Anatomy:
    """The base anatomy with the fitted values (layers, muscle means/spreads, grid placement)."""
    v = {k: val for k, (val, _) in subject.items()}
    L = base.layers
    layers = replace(L, fat_thickness_mm=round(v["fat_mm"], 4), skin_thickness_mm=round(v["skin_mm"], 4),
                     muscle_conductivity_longitudinal=round(min(v["anisotropy"] * L.muscle_conductivity_radial, 5.0), 5))
    lengths, ivs, cvs = up[:, 5], up[:, 3], up[:, 4]
    Lm = float(np.mean(lengths))
    izf = ivs / lengths + 0.5
    m = base.muscle
    muscle = replace(m, fibre_length_mm=round(float(np.clip(Lm, 20.0, 250.0)), 3),
                     fibre_length_spread_mm=round(float(np.clip(np.std(lengths), 0.0, 50.0)), 3),
                     iz_fraction=round(float(np.clip(np.mean(izf), 0.2, 0.8)), 4),
                     iz_spread_fraction=round(float(np.clip(np.std(izf) * 2, 0.0, 0.3)), 4),
                     cv_mean_m_s=round(float(np.clip(np.mean(cvs), 2.0, 7.0)), 4),
                     cv_std_m_s=round(float(np.clip(np.std(cvs), 0.0, 1.5)), 4))
    g = base.grid
    rot = ((g.rotation_deg + v["rotation_deg"] + 180.0) % 360.0) - 180.0
    grid = replace(g, rotation_deg=round(float(rot), 4), centre_z_mm=round(float(g.centre_z_mm + v["dz_mm"]), 4))
    a = replace(base, name=f"{base.name}_subject", description=f"{base.description} (fitted subject)",
                layers=layers, muscle=muscle, grid=grid, source="", text="")
    # The anatomy loader requires the grid over the muscle. The muscle width is not fitted: widen it
    # as far as a turned grid needs, so the subject file loads with --anatomy.
    import tomllib

    for _ in range(2):
        try:
            anatomy_mod.from_dict(tomllib.loads(anatomy_mod.to_toml(a)), source="fitted subject")
            break
        except anatomy_mod.AnatomyError as e:
            if "wide" not in str(e):
                raise
            xz, _ = a.grid.electrode_positions()
            need = 2 * (np.abs(xz[:, 0]).max() - a.grid.ied_mm) + 1.0
            a = replace(a, muscle=replace(a.muscle, width_mm=round(float(max(need, a.muscle.width_mm)), 2)))
    return a


__all__ = ["fit", "fit_units", "SubjectFit", "UnitFit", "FitError", "select_units", "subject_bounds", "unit_bounds", "SUBJECT_NAMES",
           "UNIT_NAMES", "provenance"]
