"""bmiss with the surrogate vs the analytic conductor as forward model, on one simulated recording.

    python experiments/bench_surrogate_downstream.py [--duration 20 --snr 20 --seed 0 --n-units 100]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bmiss
from bmiss import api, metrics


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--json", default="results/bench_surrogate_downstream.json")
    a = ap.parse_args(argv)
    rec = bmiss.simulate("biceps_brachii", duration_s=a.duration, snr_db=a.snr, seed=a.seed, n_units=a.n_units)
    out = {}
    for fwd in ("surrogate", "conductor"):
        t = time.perf_counter()
        dec = api.decompose(rec, "bmiss", progress=False, forward=fwd)
        dt = time.perf_counter() - t
        rep = api.evaluate(dec, rec)
        out[fwd] = {"found_90": rep["summary"]["found_90"], "n_false": rep["summary"]["n_false"], "time_s": round(dt, 1),
                    "timing": dec.meta["timing_s"],
                    "nrmse": {k: v.get("nrmse") for k, v in (rep.get("property_errors") or {}).items()
                              if isinstance(v, dict)}}
        print(fwd, out[fwd]["found_90"], "found, ", out[fwd]["n_false"], "false, ", out[fwd]["time_s"], "s", flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(metrics._jsonable({"config": vars(a), "results": out}), indent=1))


if __name__ == "__main__":
    main()
