"""Time of the default bmiss decomposition against cbss, first call and after JIT, stage by stage.

    python experiments/bench_time.py --duration 20 --json results/bench_time.json

Two recordings with the same shapes (biceps_brachii, 64 channels, per-fibre MUAPs, tissue
perturbed away from the nominal anatomy the inversion reads) are decomposed in one process,
cbss and bmiss interleaved: the first recording's times include compilation, the second's are
after JIT (same shapes, new data). Reported per method: total, and for bmiss the stages
(prepare, blind search, subject fit, model search, deconvolution, unit properties) from the
decomposition's own timing; the ratio bmiss / cbss is of the same recording in the same run.
``--repeats R`` decomposes the second recording R times (cbss and bmiss interleaved) and adds the
median time, ratio and stage times over the repeats: single runs of the same code on the same
quiet machine differed by up to 30 % between sessions.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from bmiss.files import write_json
import bmiss
from bmiss import api
from bmiss import files as bfiles
from bench_mismatch import _model_meta, parse_method  # "bmiss:forward=surrogate,n_steps=20" -> decompose options

TISSUE = {"fat_thickness_mm": 4.5, "skin_thickness_mm": 1.4}


def stages(dec) -> dict:
    """Seconds per named stage of the run (``meta["timing_s"]``), plus the total."""
    t = dict(dec.meta.get("timing_s", {}))
    return {k: v for k, v in t.items() if k != "search_steps"} | {"search_steps": t.get("search_steps")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--seeds", type=int, nargs=2, default=[0, 1], help="first (compile) and second (after JIT)")
    ap.add_argument("--methods", nargs="+", default=["cbss", "bmiss"],
                    help="methods, with options as in bench_mismatch (e.g. bmiss:forward=surrogate)")
    ap.add_argument("--repeats", type=int, default=1, help="decompositions of the second recording")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    prov = bfiles.provenance()
    rows = []
    calls = [(0, a.seeds[0])] + [(1 + r, a.seeds[1]) for r in range(max(1, a.repeats))]
    rec, rec_seed = None, None
    for k, seed in calls:
        if seed != rec_seed:
            rec = bmiss.simulate("biceps_brachii", duration_s=a.duration, snr_db=a.snr, seed=seed,
                                 n_units=a.n_units, tissue_overrides=TISSUE)
            rec_seed = seed
        call = "first (compile included)" if k == 0 else "after JIT" + (f" (repeat {k})" if a.repeats > 1 else "")
        row = {"seed": seed, "call": call, "methods": {}}
        for m, mname, kw in map(parse_method, a.methods):
            t = time.perf_counter()
            dec = api.decompose(rec, mname, progress=False, seed=seed, **kw)
            dt = time.perf_counter() - t
            s = api.evaluate(dec, rec)["summary"]
            row["methods"][m] = {"time_s": round(dt, 2), "n_units": dec.n_units, "found_90": s["found_90"],
                                 "false": s["n_false"], "stages": stages(dec), **_model_meta(dec)}
            print(f"seed {seed} ({row['call']}): {m:6s} {dt:7.1f} s  units {dec.n_units:3d}  found {s['found_90']:3d} "
                  f" false {s['n_false']:2d}", flush=True)
        if "cbss" in row["methods"]:
            base = row["methods"]["cbss"]["time_s"]
            row["ratio_to_cbss"] = {m: round(v["time_s"] / base, 2) for m, v in row["methods"].items()}
        rows.append(row)
    after = [r for r in rows if r["call"].startswith("after JIT")]
    median = {}
    if after:
        for m in a.methods:
            st = [r["methods"][m]["stages"] for r in after]
            median[m] = {"time_s": statistics.median(r["methods"][m]["time_s"] for r in after),
                         "stages": {k: round(statistics.median(x[k] for x in st), 3)
                                    for k in st[0] if k != "search_steps"}}
        if "cbss" in a.methods:
            median["ratio_to_cbss"] = {m: round(statistics.median(r["ratio_to_cbss"][m] for r in after), 2)
                                       for m in a.methods}
        print("median after JIT:", json.dumps(median))
    doc = {"command": " ".join([sys.executable] + sys.argv), "settings": vars(a), "tissue": TISSUE, "rows": rows,
           "median_after_jit": median,
           "provenance": prov, "load_after": bfiles.provenance()["load_avg"],
           "note": "recording shapes are equal, so the second call reuses the compiled kernels where the "
                   "shapes of the unit-dependent stages (subject fit, unit fit) match"}
    print(json.dumps([{r["call"]: {m: v["time_s"] for m, v in r["methods"].items()}} for r in rows]))
    if a.json:
        write_json(a.json, doc)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
