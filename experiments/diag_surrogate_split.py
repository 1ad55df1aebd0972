"""Where the MUAP network's time goes: its per-electrode MLP against its Fourier read-out.

One batch of MUAPs (biceps_brachii's 64 electrodes and window, MUs drawn in the anatomy's ranges),
after JIT, best of ``--repeats``: the whole network (``MuapNet.electrodes``), the MLP alone
(``MuapNet.mlp``), and the read-out's parts at the same shapes: the per-electrode phase rotation of
the travelling wave, the per-MU phases of the sample times, and the two batched products that read
the profiles at the sample times ([Ne x M] by [M x T] per MU, M Fourier frequencies).

    python experiments/diag_surrogate_split.py --json results/diag_surrogate_split.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bmiss import anatomy  # noqa: E402
from bmiss.files import provenance, write_json  # noqa: E402
from bmiss.muapnet import ONSET_MS, _sabs, _sincos  # noqa: E402
from bmiss.surrogate import load_surrogate  # noqa: E402


def best(f, x, repeats):
    jax.block_until_ready(f(x))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(x))
        ts.append(time.perf_counter() - t)
    return round(min(ts), 4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    s = load_surrogate(anatomy.load("biceps_brachii"))
    m = s.model
    B, T = a.batch, int(s.t_ms.shape[0])
    Ne = int(s.ex.shape[0])
    g = np.random.default_rng(a.seed)
    p = jnp.asarray(np.stack([g.uniform(6, 20, B), g.uniform(-10, 10, B), g.uniform(3, 6, B), g.uniform(-10, 10, B),
                              g.uniform(3.5, 4.5, B), g.uniform(100, 140, B)], 1), jnp.float32)
    tv = jnp.asarray(np.tile([1.0, 3.0, 5.0, 20.0, 0.5, 20.0, 2.0, 2.5], (B, 1)), jnp.float32)
    sr = jnp.full((B,), 0.1, jnp.float32)
    ex, ez = jnp.broadcast_to(s.ex[None], (B, Ne)), jnp.broadcast_to(s.ez[None], (B, Ne))
    rad, t = jnp.full((B,), 0.5, jnp.float32), jnp.broadcast_to(s.t_ms[None], (B, T))
    w = m.omega[...]
    M = int(w.shape[0])
    G = jnp.asarray(g.normal(size=(B, Ne, M)), jnp.float32)
    C = jnp.asarray(g.normal(size=(B, M, T)), jnp.float32)
    parts = {
        "network": jax.jit(lambda p: m.electrodes(p, tv, sr, ex, ez, rad, t)),
        "mlp": jax.jit(lambda p: m.mlp(p, tv, ex, ez, rad)),
        "wave_phases [B, Ne, M]": jax.jit(lambda p: _sincos(_sabs(ez - p[:, 3, None])[..., None] * w)),
        "time_phases [B, M, T]": jax.jit(lambda p: _sincos((p[:, 4, None] * (t - ONSET_MS))[:, None, :] * w[None, :, None])),
        "read_out_products": jax.jit(lambda p: jnp.einsum("bnm,bmt->bnt", G * p[:, :1, None], C)
                                     - jnp.einsum("bnm,bmt->bnt", G, C * p[:, 1:2, None])),
    }
    out = {"provenance": provenance(**vars(a)), "shapes": {"B": B, "Ne": Ne, "M": M, "T": T}, "seconds": {}}
    for k, f in parts.items():
        out["seconds"][k] = best(f, p, a.repeats)
        print(f"{k:24s} {out['seconds'][k]:.4f} s", flush=True)
    out["read_out_products_gflop"] = round(2 * 2 * B * Ne * M * T / 1e9, 3)
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
