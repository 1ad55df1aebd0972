"""Batch wall time against the sum of single runs: N recordings, one ``bmiss.batch`` vs a loop.

    nice -n 10 python experiments/bench_batch.py --n 4 --json results/bench_batch.json

N simulated recordings (biceps_brachii, 64 channels, ``--duration`` s) are written to a temporary
folder; then, in this one process run,

* single runs: ``bmiss.decompose`` on each recording in turn, in this process (the first call
  compiles, the others reuse it: the best a user's loop in one notebook does); their sum;
* the batch, cold: ``bmiss.batch`` on the folder with a fresh local cluster (default workers x
  threads) and an empty persistent compile cache, so each worker compiles once; figures and the
  study report included;
* the batch, warm (``--warm``): the same again into a new folder with the cache the cold batch
  left (a lab's second batch of recordings of the same shape): no compilation.

Reported: both wall times, the ratio batch / sum of singles, each recording's decompose time in
the batch, and the load average before, between and after (the machine may be shared).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import bmiss
from bmiss.files import provenance, write_json


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="recordings (the issue's target is 16)")
    ap.add_argument("--duration", type=float, default=20.0, help="s")
    ap.add_argument("--n-units", type=int, default=60)
    ap.add_argument("--method", default="cbss")
    ap.add_argument("--n-iter", type=int, default=20, help="cbss iterations")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-figures", action="store_true", help="batch without per-recording figures (the single "
                    "runs make none)")
    ap.add_argument("--warm", action="store_true", help="also time a second batch with the compile cache warm")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    settings = {"n_iter": a.n_iter, "seed": 0} if a.method == "cbss" else {"seed": 0}
    load = {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        for i in range(a.n):
            rec = bmiss.simulate("biceps_brachii", duration_s=a.duration, seed=100 + i, n_units=a.n_units)
            bmiss.save_recording(data / f"rec{i:02d}.npz", rec)
        sim_s = time.perf_counter() - t
        print(f"simulated {a.n} x {rec.n_channels} ch x {a.duration:g} s in {sim_s:.1f} s", flush=True)
        load["after_simulation"] = os.getloadavg()
        singles = []
        for i in range(a.n):
            rec = bmiss.load_recording(data / f"rec{i:02d}.npz")
            t = time.perf_counter()
            dec = bmiss.decompose(rec, a.method, progress=False, **settings)
            singles.append({"recording": f"rec{i:02d}", "time_s": round(time.perf_counter() - t, 2),
                            "n_units": dec.n_units})
            print(f"single run {i}: {singles[-1]['time_s']} s, {dec.n_units} MUs", flush=True)
        sum_single = sum(s["time_s"] for s in singles)
        load["after_singles"] = os.getloadavg()
        cache = Path(tmp) / "jax_cache"
        batches = {}
        for name in ("cold", "warm") if a.warm else ("cold",):
            t = time.perf_counter()
            res = bmiss.batch(data, Path(tmp) / f"out_{name}", method=a.method, settings=settings,
                              workers=a.workers, jax_cache=cache, figures=not a.no_figures,
                              progress=True)
            wall = time.perf_counter() - t
            load[f"after_batch_{name}"] = os.getloadavg()
            batches[name] = {
                "wall_s": round(wall, 2), "over_sum_single": round(wall / sum(s["time_s"] for s in singles), 3),
                "failed": res.failed,
                "per_recording": {k: {"decompose_s": (s.get("times") or {}).get("decompose_s"),
                                      "total_s": (s.get("times") or {}).get("total_s"),
                                      "n_units": (s.get("recording") or {}).get("n_units"), "status": s["status"]}
                                  for k, s in res.status.items()}}
            print(f"batch ({name} compile cache): {wall:.1f} s", flush=True)
        batch_s = batches["cold"]["wall_s"]
    out = {
        "provenance": provenance(**vars(a)),
        "n_recordings": a.n, "duration_s": a.duration, "n_channels": int(rec.n_channels), "method": a.method,
        "settings": settings, "cpu_count": os.cpu_count(), "load_avg": load,
        "single_runs": singles, "sum_single_s": round(sum_single, 2),
        "batch_wall_s": round(batch_s, 2), "batch_over_sum_single": round(batch_s / sum_single, 3),
        "batches": batches, "simulate_s": round(sim_s, 1),
        "note": "batch wall time includes the cluster start, each worker's imports and compilation, the figures "
                "and the study report; the single runs compile once in this process",
    }
    print(f"sum of single runs {sum_single:.1f} s; " + "; ".join(
        f"batch {k} {v['wall_s']:.1f} s (ratio {v['over_sum_single']:.2f})" for k, v in batches.items())
        + f"; load {load}")
    if a.json:
        write_json(a.json, out)
        print(f"wrote {a.json}")
    return out


if __name__ == "__main__":
    main()
