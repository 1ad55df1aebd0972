"""The fit's differentiable model: MUAPs of a subject and its units, the loss and the optimisers.

:class:`FitModel` holds everything static the loss needs (conductor, band response, bounds,
held parameters, prior widths); ``muaps(s, U)`` gives the band-passed model MUAPs
[n_units, C, T] µV of subject parameters ``s`` [8] and unit parameters ``U`` [n, 8]
(unconstrained). Loss = ``0.5 Σ ((obs - model) w)²`` (``w = 1/σ``) + the population prior.
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import filters
from ..conductor import Tissue
from ..errors import SettingsError
from ..templates import Templates
from .bounds import to_phys

__all__ = ["FitModel", "loss", "optimise", "optimise_units", "unit_outputs", "chunked", "phys_and_jacobian",
           "band_response", "decimate", "observations"]


class FitModel(eqx.Module):
    """Everything static the loss needs (MUAP model, band filter, bounds, data)."""

    cond: eqx.Module  # Conductor, or the Surrogate (same placed / with_times / muap(p, shift_ms, tissue))
    sub_lo: jax.Array
    sub_hi: jax.Array
    unit_lo: jax.Array
    unit_hi: jax.Array
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
        return to_phys(s, self.sub_lo, self.sub_hi)

    def unit_phys(self, u, subj):
        """Per-unit physical [8]: PARAM_NAMES (absolute depth, iz in mm) + log_gain, shift_ms."""
        v = to_phys(u, self.unit_lo, self.unit_hi)
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
        """Population prior: half the sum of squares of :meth:`prior_z`."""
        return 0.5 * jnp.sum(self.prior_z(s, U) ** 2)

    def prior_z(self, s, U):
        """Per-unit z-scores [n, 4] of length, CV and IZ fraction against the subject's means, and of
        the log gain against 0."""
        subj = self.subject(s)
        ph = jax.vmap(lambda u: self.unit_phys(u, subj))(U)
        sdL, sdcv, sdiz, sdg = self.prior_sd
        zL = (ph[:, 5] - subj[5]) / (sdL * subj[5])
        zcv = (ph[:, 4] - subj[6]) / sdcv
        izf = ph[:, 3] / ph[:, 5] + 0.5
        ziz = (izf - subj[7]) / sdiz
        zg = ph[:, 6] / sdg
        return jnp.stack([zL, zcv, ziz, zg], -1)


def _residuals(model: FitModel, s, U, obs, w):
    return (obs - model.muaps(s, U)) * w


def loss(theta, model, obs, w):
    s, U = theta
    r = _residuals(model, s, U, obs, w)
    return 0.5 * jnp.sum(r**2) + model.prior(s, U)


@eqx.filter_jit
def _run_adam(theta, opt_state, model, obs, w, n_steps: int, lr: float):
    opt = optax.adam(lr)
    vg = jax.value_and_grad(loss)

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
    fn = lambda th: loss(th, model, obs, w)  # noqa: E731
    vg = optax.value_and_grad_from_state(fn)

    def step(carry, _):
        th, st = carry
        val, g = vg(th, state=st)
        upd, st = opt.update(g, st, th, value=val, grad=g, value_fn=fn)
        return (optax.apply_updates(th, upd), st), val

    (theta, _), losses = jax.lax.scan(step, (theta, opt.init(theta)), None, length=n_steps)
    return theta, losses


def _unit_residuals(u, model: FitModel, s, obs, w):
    """One unit's weighted residuals and prior z-scores, concatenated [C*T + 4]: the loss is half their
    sum of squares."""
    r = ((obs - model.muaps(s, u[None])[0]) * w).ravel()
    return jnp.concatenate([r, model.prior_z(s, u[None])[0]])


def _lm(u0, res, n_steps: int):
    """``n_steps`` Levenberg-Marquardt iterations on the residual function ``res`` from ``u0``, with no
    data-dependent loop (vmappable, one compiled shape). Each iteration takes one forward-mode
    Jacobian at the candidate; a candidate that does not lower the loss is rejected and the damping
    raised. Returns (u, losses [n_steps])."""

    def lin(u):
        J, r = jax.jacfwd(lambda v: (res(v), res(v)), has_aux=True)(u)
        return r, J

    def step(carry, _):
        u, r, J, f, lam = carry
        H = J.T @ J
        g = J.T @ r
        d = jnp.diag(H) + 1e-9
        du = -jnp.linalg.solve(H + lam * jnp.diag(d) + 1e-9 * jnp.eye(H.shape[0]), g)
        un = u + du
        rn, Jn = lin(un)
        fn = 0.5 * jnp.sum(rn**2)
        ok = jnp.isfinite(fn) & (fn < f)
        u, r, J, f = (jnp.where(ok, a, b) for a, b in ((un, u), (rn, r), (Jn, J), (fn, f)))
        lam = jnp.clip(jnp.where(ok, lam * 0.3, lam * 10.0), 1e-7, 1e7)
        return (u, r, J, f, lam), f

    r0, J0 = lin(u0)
    (u, *_), losses = jax.lax.scan(step, (u0, r0, J0, 0.5 * jnp.sum(r0**2), jnp.asarray(1e-2, u0.dtype)),
                                   None, length=n_steps)
    return u, losses


@eqx.filter_jit
def _run_lm_units(U, model: FitModel, s, obs, w, n_steps: int):
    return jax.vmap(lambda u0, o, ww: _lm(u0, lambda v: _unit_residuals(v, model, s, o, ww), n_steps))(U, obs, w)


def optimise_units(U, model: FitModel, s, obs, w, n_steps: int):
    """Every unit's own Levenberg-Marquardt fit, the subject held at ``s``.

    With the subject held the loss is a sum of independent per-unit least-squares terms (8
    parameters, C*T residuals): a Gauss-Newton method per unit converges in tens of iterations
    where one joint L-BFGS over all units, sharing a single step length and curvature memory, took
    ~100 (``experiments/bench_unit_props.py``). Returns (U [n, 8], losses [n, n_steps]).

    Weighing the data by 1 / each unit's reduced chi² for the second half of the iterations (model
    mismatch treated as noise, so the prior keeps more say) was tried and changed no property RMSE
    by more than 0.02 on one recording; not kept."""
    return _run_lm_units(U, model, s, obs, w, n_steps)


def optimise(theta, model, obs, w, n_steps, optimiser, lr):
    if optimiser == "lbfgs":
        return _run_lbfgs(theta, model, obs, w, n_steps)
    if optimiser == "adam":
        th, _, losses = _run_adam(theta, optax.adam(lr).init(theta), model, obs, w, n_steps, lr)
        return th, losses
    raise SettingsError(f"unknown optimiser {optimiser!r}; use 'lbfgs' or 'adam'")


@eqx.filter_jit
def unit_outputs(model: FitModel, s, U):
    """Model MUAPs [n, C, T] and physical parameters [n, 8] of a chunk of units. Jitted with the model
    as an argument: an eager call compiles every operation anew for each unit count (seconds)."""
    subj = model.subject(s)
    return model.muaps(s, U), jax.vmap(lambda u: model.unit_phys(u, subj))(U)


@eqx.filter_jit
def _phys_jacobians(model: FitModel, s, U):
    """d subject / d s [ns, ns] and each unit's d unit_phys / d (s, u) [n, 8, ns + 8]."""
    ns = s.shape[0]
    Js = jax.jacfwd(model.subject)(s)
    Ju = jax.vmap(lambda u: jax.jacfwd(lambda f: model.unit_phys(f[ns:], model.subject(f[:ns])))(
        jnp.concatenate([s, u])))(U)
    return Js, Ju


def chunked(fn, model: FitModel, s, U, chunk: int):
    """``fn(model, s, U[i:i+chunk])`` over chunks, outputs concatenated along units (one compiled shape
    when ``U.shape[0]`` is a multiple of ``chunk``)."""
    outs = [fn(model, s, U[i:i + chunk]) for i in range(0, U.shape[0], chunk)]
    return tuple(np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(len(outs[0])))


def phys_and_jacobian(model: FitModel, s, U, chunk: int = 8):
    """Physical values of (subject, every unit) flattened [ns + 8n] and their Jacobian w.r.t. the
    unconstrained (s, U) [(ns + 8n)²], assembled from per-chunk blocks (one compile for any n that is
    a multiple of ``chunk``)."""
    n, ns = U.shape[0], s.shape[0]
    if n % chunk:
        chunk = n
    _, ph = chunked(unit_outputs, model, s, U, chunk)
    Js, Ju = chunked(_phys_jacobians, model, s, U, chunk)  # Js: the same [ns, ns] block per chunk
    Js, Ju = Js[:ns].astype(np.float64), Ju.astype(np.float64)
    G = np.zeros((ns + 8 * n, ns + 8 * n))
    G[:ns, :ns] = Js
    for i in range(n):
        r = slice(ns + 8 * i, ns + 8 * (i + 1))
        G[r, :ns] = Ju[i, :, :ns]
        G[r, r] = Ju[i, :, ns:]
    return np.concatenate([np.asarray(model.subject(s), np.float64), ph.astype(np.float64).ravel()]), G


def band_response(nfft: int, fs: float, band) -> np.ndarray:
    """|H(f)|² of the templates' band-pass (order 4) on an rfft grid of ``nfft`` samples."""
    return filters.band_power_response(np.fft.rfftfreq(nfft, 1 / fs), fs, band, order=filters.TEMPLATE_ORDER)


def decimation(fs: float, band) -> int:
    """The factor :func:`decimate` keeps every q-th sample with (1: none)."""
    return int(fs // 2048) if band is not None and band[1] * 3 <= fs / max(int(fs // 2048), 1) else 1


def decimate(tpl: Templates) -> tuple[Templates, int]:
    """Band-limited averages (<= band[1] Hz) lose nothing at ~2 kHz, and the model's cost grows with
    the samples: keep every q-th sample (q = fs // 2048 where the band allows). Returns (tpl, q)."""
    q = decimation(tpl.fs, tpl.band)
    if q <= 1:
        return tpl, 1
    r0 = tpl.onset % q
    n = len(range(r0, tpl.muaps.shape[-1], q))
    return Templates(muaps=tpl.muaps[..., r0::q].copy(), noise_std=tpl.noise_std[..., r0::q].copy(),
                     onset=tpl.onset // q, window=(-(tpl.onset // q), -(tpl.onset // q) + n),
                     support=tpl.support // q, n_discharges=tpl.n_discharges, fs=tpl.fs / q, band=tpl.band,
                     truncated=tpl.truncated), q


def observations(tpl: Templates, cmask: np.ndarray):
    """Observations [n, C, T] and their weights 1/σ (0 on unused channels); σ has a floor of 1e-3 of
    each unit's peak so that noiseless averages keep finite weights."""
    floor = 1e-3 * np.abs(tpl.muaps).max(axis=(1, 2), keepdims=True)
    sig = np.sqrt(tpl.noise_std.astype(np.float64) ** 2 + floor**2)
    return (jnp.asarray(tpl.muaps, jnp.float32),
            jnp.asarray((cmask[None, :, None] / np.maximum(sig, 1e-30)).astype(np.float32)))


