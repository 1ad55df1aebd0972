"""The posterior network: an electrode-set encoder (attention over electrode tokens) and a
mixture-density head giving each MU property's marginal posterior as a Gaussian mixture.

Why a mixture-density head and not a normalising flow: what the pipeline reports is each property's
marginal mean and intervals; a K-component mixture per property represents skewed and two-peaked
marginals (a unit on the grid's edge: x on either side), its quantiles and moments are exact
(no sampling) and it needs no new dependency (Equinox only). The joint correlations (depth vs fibre
count) are not modelled; ``UnitPosterior`` says so.

Targets are normalised: ``z = (t - TARGET_SHIFT) / TARGET_SCALE`` with t = (depth, x, log fibres, IZ,
CV, ln length); x and IZ relative to the used electrodes' bounding-box centre.
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .features import N_GLOBAL, N_TOKEN

N_PARAM = 6
TARGET_SHIFT = np.array([12.0, 0.0, 5.0, 0.0, 4.3, np.log(80.0)], np.float32)
TARGET_SCALE = np.array([7.0, 20.0, 1.2, 25.0, 0.9, 0.6], np.float32)


def to_target(theta: np.ndarray) -> np.ndarray:
    """Physical [.., 6] (PARAM_NAMES; length in mm) -> normalised network targets."""
    t = np.array(theta, np.float32, copy=True)
    t[..., 5] = np.log(t[..., 5])
    return (t - TARGET_SHIFT) / TARGET_SCALE


class _Block(eqx.Module):
    ln1: eqx.nn.LayerNorm
    att: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp1: eqx.nn.Linear
    mlp2: eqx.nn.Linear

    def __init__(self, d, heads, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.ln1, self.ln2 = eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)
        self.att = eqx.nn.MultiheadAttention(heads, d, key=k1)
        self.mlp1, self.mlp2 = eqx.nn.Linear(d, 2 * d, key=k2), eqx.nn.Linear(2 * d, d, key=k3)

    def __call__(self, h, mask):
        a = jax.vmap(self.ln1)(h)
        h = h + self.att(a, a, a, mask=mask[None, :] & mask[:, None] | jnp.eye(h.shape[0], dtype=bool))
        b = jax.vmap(self.ln2)(h)
        return h + jax.vmap(lambda v: self.mlp2(jax.nn.gelu(self.mlp1(v))))(b)


class PosteriorNet(eqx.Module):
    """tokens [NE, N_TOKEN], mask [NE], globals [N_GLOBAL] -> mixture parameters [N_PARAM, 3, K]."""

    embed1: eqx.nn.Linear
    embed2: eqx.nn.Linear
    gproj: eqx.nn.Linear
    blocks: list
    head1: eqx.nn.Linear
    head2: eqx.nn.Linear
    out: eqx.nn.Linear
    n_comp: int = eqx.field(static=True)

    def __init__(self, key, width: int = 96, depth: int = 2, heads: int = 4, n_comp: int = 5):
        ks = jax.random.split(key, 6 + depth)
        self.embed1 = eqx.nn.Linear(N_TOKEN, width, key=ks[0])
        self.embed2 = eqx.nn.Linear(width, width, key=ks[1])
        self.gproj = eqx.nn.Linear(N_GLOBAL, width, key=ks[2])
        self.blocks = [_Block(width, heads, ks[6 + i]) for i in range(depth)]
        self.head1 = eqx.nn.Linear(2 * width + N_GLOBAL, 2 * width, key=ks[3])
        self.head2 = eqx.nn.Linear(2 * width, 2 * width, key=ks[4])
        self.out = eqx.nn.Linear(2 * width, N_PARAM * 3 * n_comp, key=ks[5])
        self.n_comp = n_comp

    def __call__(self, tokens, mask, glob):
        g = self.gproj(glob)
        h = jax.vmap(lambda t: self.embed2(jax.nn.gelu(self.embed1(t))))(tokens) + g[None, :]
        for b in self.blocks:
            h = b(h, mask)
        m = mask[:, None].astype(h.dtype)
        mean = (h * m).sum(0) / jnp.maximum(m.sum(), 1.0)
        mx = jnp.max(jnp.where(m > 0, h, -1e4), axis=0)
        z = jnp.concatenate([mean, mx, glob])
        z = jax.nn.gelu(self.head1(z))
        z = z + jax.nn.gelu(self.head2(z))
        o = self.out(z).reshape(N_PARAM, 3, self.n_comp)
        logit = o[:, 0]
        mu = o[:, 1]
        log_sd = jnp.clip(o[:, 2], -7.0, 3.0)
        return jnp.stack([logit, mu, log_sd], 1)


def mixture_nll(mix, z):
    """Negative log-likelihood of normalised targets z [N_PARAM] under mix [N_PARAM, 3, K] (summed)."""
    logit, mu, log_sd = mix[:, 0], mix[:, 1], mix[:, 2]
    logw = jax.nn.log_softmax(logit, axis=-1)
    lp = -0.5 * ((z[:, None] - mu) / jnp.exp(log_sd)) ** 2 - log_sd - 0.5 * jnp.log(2 * jnp.pi)
    return -jax.scipy.special.logsumexp(logw + lp, axis=-1)


def leaves(model: PosteriorNet) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]


def _is_leaf_array(x) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct) or eqx.is_array(x)


def from_leaves(arrays: list[np.ndarray], config: dict) -> PosteriorNet:
    # an abstract skeleton: running the initialisers would compile a random draw per weight shape
    # (with the MUAP network's, ~2.6 s of a first decomposition's compile) only to overwrite every draw
    skel = eqx.filter_eval_shape(lambda: PosteriorNet(jax.random.PRNGKey(0), **config))
    params, static = eqx.partition(skel, _is_leaf_array)
    flat, tree = jax.tree_util.tree_flatten(params)
    if len(flat) != len(arrays) or any(a.shape != b.shape for a, b in zip(flat, arrays)):
        raise ValueError("weights do not match the network configuration")
    return eqx.combine(jax.tree_util.tree_unflatten(tree, [jnp.asarray(a) for a in arrays]), static)
