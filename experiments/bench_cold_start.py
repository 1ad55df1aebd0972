"""A new ``bmiss decompose`` process: time with an empty and with a filled compile cache.

    python experiments/bench_cold_start.py --json results/bench_cold_start.json

One simulated recording (biceps_brachii, 64 channels, ``--duration`` s) is written once; then the
``bmiss`` command decomposes it in fresh processes, each with its own wall time:

1. ``BMISS_JAX_CACHE=off`` (every kernel compiled, as before this cache existed);
2. an empty cache folder (compiles and fills it);
3. the same folder again (a user's second recording of the same shape: kernels loaded).

Reported: the three wall times and the ratios 3/1 and 2/1, the cache's size, the load average.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bmiss
from bmiss.files import provenance, write_json


def _run(args, env) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bmiss", *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bmiss {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return round(time.perf_counter() - t, 2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--method", default="bmiss")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    prov = provenance(**vars(a))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rec = bmiss.simulate("biceps_brachii", duration_s=a.duration, seed=1, n_units=a.n_units,
                             tissue_overrides={"fat_thickness_mm": 4.5})
        bmiss.save_recording(tmp / "rec.npz", rec)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "BMISS_JAX"))}
        runs, load = {}, {"start": os.getloadavg()}
        for name, extra in (("cache_off", {"BMISS_JAX_CACHE": "off"}),
                            ("cache_empty", {"BMISS_JAX_CACHE": str(tmp / "cache")}),
                            ("cache_filled", {"BMISS_JAX_CACHE": str(tmp / "cache")})):
            out = tmp / f"{name}.npz"
            runs[name] = _run(["decompose", str(tmp / "rec.npz"), "--method", a.method, "--quiet", "--out", str(out)],
                              {**base, **extra})
            load[name] = os.getloadavg()
            print(f"{name}: {runs[name]} s", flush=True)
        size = sum(p.stat().st_size for p in (tmp / "cache").rglob("*") if p.is_file())
    out = {"provenance": prov, "wall_s": runs, "filled_over_off": round(runs["cache_filled"] / runs["cache_off"], 3),
           "empty_over_off": round(runs["cache_empty"] / runs["cache_off"], 3), "cache_mb": round(size / 2**20, 1),
           "load_avg": load, "note": "each run is a fresh process: imports, reading, decomposition, writing"}
    print(out)
    if a.json:
        write_json(a.json, out)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
