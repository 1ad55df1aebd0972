"""Uncertainty of the fitted parameters: Laplace approximations.

* :func:`laplace`: joint covariance of all unconstrained parameters (subject and units):
  Gauss-Newton Hessian of the data term (exact Jacobians, ``jax.jacfwd`` per unit) + exact
  Hessian of the prior.
* :func:`unit_laplace`: with the subject held, each unit's own block, scaled by its reduced χ².

These are local curvature widths: they say how well the data pin a parameter WITHIN the model,
not how far the model is from the truth (model mismatch); see ``bmiss.posterior`` for calibrated
intervals.
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .model import FitModel

__all__ = ["laplace", "unit_laplace"]


# Jitted once per shape (the model is a pytree argument, not a closure): an eager lax.map over a
# fresh lambda compiled anew on every call (6-10 s per call, measured).
@eqx.filter_jit
def _jacobians(model: FitModel, s, U, obs, w):
    """Per-unit Jacobians of the weighted residuals w.r.t. (subject, unit): [n, R, ns + 8]."""
    ns = s.shape[0]

    def r_unit(su, o, ww):
        s_, u_ = su[:ns], su[ns:]
        return ((o - model.muaps(s_, u_[None])[0]) * ww).ravel()

    return jax.lax.map(lambda a: jax.jacfwd(r_unit)(jnp.concatenate([s, a[0]]), a[1], a[2]), (U, obs, w))


@eqx.filter_jit
def _prior_hessians(model: FitModel, s, U):
    """Per-unit Hessians [n, ns + 8, ns + 8] of the prior w.r.t. (subject, unit): the prior is a sum
    of per-unit terms, so the joint Hessian is the sum of these blocks."""
    ns = s.shape[0]
    return jax.vmap(lambda u: jax.hessian(lambda f: model.prior(f[:ns], f[ns:][None]))(jnp.concatenate([s, u])))(U)


def laplace(model: FitModel, s, U, obs, w, chunk: int = 8):
    """Covariance of all unconstrained parameters [(8 + 8n)²] (Gauss-Newton data + exact prior Hessian).

    Jacobians and prior blocks are taken over chunks of ``chunk`` units (when ``U.shape[0]`` is a
    multiple of it, as the subject fit pads), so any number of units shares one compilation."""
    n = U.shape[0]
    ns = s.shape[0]
    if n % chunk:
        chunk = n
    J = np.concatenate([np.asarray(_jacobians(model, s, U[i:i + chunk], obs[i:i + chunk], w[i:i + chunk]), np.float64)
                        for i in range(0, n, chunk)])
    P = np.concatenate([np.asarray(_prior_hessians(model, s, U[i:i + chunk]), np.float64) for i in range(0, n, chunk)])
    H = np.zeros((ns + 8 * n, ns + 8 * n))
    for i in range(n):
        sl = np.r_[0:ns, ns + 8 * i:ns + 8 * (i + 1)]
        H[np.ix_(sl, sl)] += J[i].T @ J[i] + P[i]
    H += 1e-6 * np.eye(H.shape[0])  # parameters the data never touch stay finite (and huge)
    return np.linalg.pinv(H, hermitian=True)


@eqx.filter_jit
def unit_laplace(model: FitModel, s, U, obs, w):
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


