"""Forward-model benchmark: MUAPs and their gradients per second, EMG synthesis time (after JIT;
compile separate).

    python experiments/bench_forward.py [--anatomy biceps_brachii] [--json results/bench_forward.json]

The gradient row is what every fit and the model search pay per MUAP: the reverse-mode gradient
of a scalar of the MUAP with respect to the six MU parameters, vmapped over the units.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bmiss import anatomy, emg, motoneurons
from bmiss.conductor import Conductor, muaps
from bmiss.simulate import sample_mu_params


def timed(fn, repeats=3):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return out, first, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--anatomy", default="biceps_brachii")
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--json", default="results/bench_forward.json")
    a = ap.parse_args(argv)
    an = anatomy.load(a.anatomy)
    p = an.pool
    pool = motoneurons.make_pool(a.n_units, fibres_min=p.fibres_min, fibres_max=p.fibres_max)
    nf = np.round(np.asarray(pool.n_fibres))
    params = sample_mu_params(an, nf, jax.random.PRNGKey(0))
    cond = Conductor.from_anatomy(an)
    rows = []
    _, c1, t1 = timed(lambda: muaps(cond, params))
    rows.append(("MUAPs, expected-potential mode", f"{a.n_units} MUs x {cond.n_channels} ch x {cond.n_samples}", c1, t1))
    grad = jax.jit(jax.vmap(jax.grad(lambda q: jnp.sum(jnp.sin(cond.muap(q) / 10.0)))))
    pj = jnp.asarray(params, jnp.float32)
    _, cg, tg = timed(lambda: grad(pj))
    rows.append(("MUAP gradients (6 parameters, reverse mode)", f"{a.n_units} MUs", cg, tg))
    key = jax.random.PRNGKey(1)
    M, c2, t2 = timed(lambda: muaps(cond, params, mode="fibres", key=key, n_max=int(p.fibres_max)), repeats=1)
    rows.append((f"MUAPs, per-fibre mode ({int(nf.sum())} fibres, {int(nf.min())}-{int(nf.max())} per MU)",
                 f"{a.n_units} MUs x {cond.n_channels} ch", c2, t2))
    fs = an.grid.fs_hz
    n = int(a.seconds * fs)
    exc = motoneurons.constant(0.5, a.seconds, fs)
    spikes = motoneurons.spike_trains(pool, exc, fs, jax.random.PRNGKey(2))
    Mn = np.asarray(M)
    _, c3, t3 = timed(lambda: emg.synthesize(Mn, spikes, n))
    rows.append((f"EMG synthesis ({sum(map(len, spikes))} discharges)", f"{a.n_units} MUs x {cond.n_channels} ch x {a.seconds:g} s",
                 c3, t3))
    print(f"{'step':60s} {'size':28s} {'first call s':>12s} {'after JIT s':>12s}")
    for r in rows:
        print(f"{r[0]:60s} {r[1]:28s} {r[2]:12.2f} {r[3]:12.3f}")
    from bmiss.files import provenance

    out = {"config": vars(a), "device": jax.devices()[0].device_kind, "platform": platform.platform(),
           "provenance": provenance(**vars(a)),
           "rows": [{"step": r[0], "size": r[1], "first_call_s": r[2], "after_jit_s": r[3]} for r in rows],
           "muaps_per_s_expected": a.n_units / t1, "muap_gradients_per_s": a.n_units / tg,
           "muaps_per_s_fibres": a.n_units / t2}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
