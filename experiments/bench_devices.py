"""One recording on 1 vs N JAX devices (bmiss.devices): wall time, pool time, same units.

    nice -n 10 python experiments/bench_devices.py --json results/bench_devices.json

One simulated recording (biceps_brachii, 64 channels, ``--duration`` s) is written to a
temporary file; then each device count runs in its own subprocess (XLA fixes the device count
at start-up): ``--xla_force_host_platform_device_count=N`` on the CPU, or the machine's devices
with ``--native``. Each subprocess decomposes the recording ``--repeats`` times (the first call
compiles) and reports the wall time, the search's pool time (``meta["timing_s"]["search_steps"]
["pool"]``), ``meta["devices"]`` and a hash of the discharges. The 1-device subprocess also
times the no-op path of :mod:`bmiss.devices` (what every search device call adds on one device).

On a CPU, forced host devices share the same cores: expect no speed-up there (the partitioned
pool adds all-reduces and gathers); the figure that matters is on a machine with several
accelerators. The load average is recorded before, between and after (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
import jax
from bmiss import api, devices
from bmiss.io import load_recording
rec = load_recording(sys.argv[1])
kw = json.loads(sys.argv[2])
runs = []
for k in range(kw.pop("repeats")):
    t = time.perf_counter()
    dec = api.decompose(rec, kw["method"], progress=False, seed=0, **kw["settings"])
    dt = time.perf_counter() - t
    h = hashlib.sha256()
    for s in dec.spikes:
        h.update(np.asarray(s, np.int64).tobytes() + b"|")
    st = dec.meta["timing_s"]
    runs.append({"wall_s": round(dt, 3), "search_s": st.get("search"), "pool_s": st["search_steps"]["pool"],
                 "device_calls": dec.meta.get("device_calls"), "n_units": dec.n_units,
                 "spikes_sha256": h.hexdigest(), "sil_sum": float(np.sum(dec.sil))})
    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
out = {"jax_devices": [str(d) for d in jax.devices()], "meta_devices": dec.meta["devices"], "runs": runs}
if jax.device_count() == 1:
    from bmiss.pipeline import refine
    st = refine.new_pool(16, dec.meta["n_ext"], rec.n_samples, 512)
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        devices.n_shards(devices.shard_leading(st)["W"]); devices.replicate(st); devices.replicate(st)
    out["noop_us_per_device_call"] = round((time.perf_counter() - t) / n * 1e6, 3)
print(json.dumps(out))
"""


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0, help="s")
    ap.add_argument("--n-units", type=int, default=60)
    ap.add_argument("--method", default="cbss")
    ap.add_argument("--n-iter", type=int, default=20, help="cbss iterations")
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="forced CPU host device counts")
    ap.add_argument("--repeats", type=int, default=3, help="decompositions per subprocess (the first compiles)")
    ap.add_argument("--native", action="store_true", help="also run once on the machine's own devices "
                    "(no forced count, no JAX_PLATFORMS)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import bmiss
    from bmiss.files import provenance, write_json
    from bmiss.io import save_recording

    settings = {"n_iter": a.n_iter} if a.method == "cbss" else {}
    prov = provenance(duration_s=a.duration, n_units=a.n_units, method=a.method, settings=settings,
                      devices=a.devices, repeats=a.repeats, native=a.native)
    doc = {"provenance": prov, "load_before": _load(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        rec = bmiss.simulate("biceps_brachii", duration_s=a.duration, seed=0, n_units=a.n_units)
        path = save_recording(Path(tmp) / "rec.npz", rec)
        doc["recording"] = {"channels": rec.n_channels, "samples": rec.n_samples, "fs": rec.fs}
        cases = [(f"{n}_host_devices", n) for n in a.devices] + ([("native", None)] if a.native else [])
        for name, n in cases:
            env = dict(os.environ)
            if n is not None:
                env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
                env["JAX_PLATFORMS"] = "cpu"
            arg = json.dumps({"repeats": a.repeats, "method": a.method, "settings": settings})
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", CHILD, str(path), arg], env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["process_s"], r["load_after"] = round(time.perf_counter() - t, 2), _load()
            doc["runs"][name] = r
            last = r["runs"][-1]
            print(f"{name}: wall {[x['wall_s'] for x in r['runs']]} s, pool {last['pool_s']} s, "
                  f"{last['n_units']} units, sharded {r['meta_devices']['sharded']}, load {r['load_after']}",
                  flush=True)
    base = doc["runs"].get("1_host_devices") or next(iter(doc["runs"].values()))

    def best(r, key):
        return min(x[key] for x in r["runs"][1:] or r["runs"])  # after JIT when there are repeats

    b_wall, b_pool = best(base, "wall_s"), best(base, "pool_s")
    doc["summary"] = {name: {"same_units_as_baseline": r["runs"][-1]["spikes_sha256"] ==
                             base["runs"][-1]["spikes_sha256"],
                             "best_wall_after_jit_s": best(r, "wall_s"),
                             "wall_ratio_to_baseline": round(best(r, "wall_s") / b_wall, 3),
                             "pool_ratio_to_baseline": round(best(r, "pool_s") / b_pool, 3),
                             "first_call_s": r["runs"][0]["wall_s"]}
                      for name, r in doc["runs"].items()}
    doc["load_after"] = _load()
    print(json.dumps(doc["summary"], indent=1))
    if a.json:
        write_json(a.json, doc, force=True)
        print("wrote", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
