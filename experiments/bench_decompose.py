"""Decomposition benchmark: MUs found (RoA >= 0.9), oracle-identifiable count, false units, time.

    python experiments/bench_decompose.py --anatomies biceps_brachii --snrs inf 20 10 \
        --methods oracle cbss bmiss --duration 20 --n-units 100 --json results/bench_decompose.json

Each recording is simulated (per-fibre MUAPs, seeded), then every method decomposes it; the
oracle (true-MUAP filters) defines the identifiable set and each method's yield is reported as a
fraction of it. The config is stored next to the results.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bmiss
from bmiss import api, metrics


def run(anatomies, snrs, methods, duration, n_units, seed, method_kw=None, progress=False, tissue=None):
    rows = []
    for an in anatomies:
        for snr in snrs:
            snr_v = None if str(snr).lower() in ("inf", "none") else float(snr)
            t = time.perf_counter()
            rec = bmiss.simulate(an, duration_s=duration, snr_db=snr_v, seed=seed, n_units=n_units,
                                 tissue_overrides=tissue)
            sim_s = time.perf_counter() - t
            ident = None
            for m in ["oracle"] + [x for x in methods if x != "oracle"]:
                t = time.perf_counter()
                dec = api.decompose(rec, m, progress=progress, **(method_kw or {}).get(m, {}))
                dt = time.perf_counter() - t
                if m == "oracle":
                    ident = api.oracle_identifiable(rec, oracle=dec)
                    if "oracle" not in methods:
                        continue
                rep = api.evaluate(dec, rec, oracle_found=ident)
                s = rep["summary"]
                pe = rep.get("property_errors") or {}
                rows.append({"anatomy": an + (" (mismatch)" if tissue else ""), "snr_db": str(snr), "method": m, "found_90": s["found_90"],
                             "found_80": s["found_80"], "identifiable": len(ident), "yield_90": s.get("yield_90"),
                             "false": s["n_false"], "duplicates": s["n_duplicates"], "n_est": s["n_est"],
                             "active_true": sum(len(x) > 0 for x in rec.true_spikes), "time_s": round(dt, 1),
                             "simulate_s": round(sim_s, 1),
                             "nrmse": {k: v.get("nrmse") for k, v in pe.items() if isinstance(v, dict)},
                             "meta_timing": dec.meta.get("timing_s")})
                r = rows[-1]
                print(f"{an:18s} {str(snr):>5s} {m:7s} found90 {r['found_90']:3d} / ident {r['identifiable']:3d} "
                      f"false {r['false']:3d} dup {r['duplicates']:3d} time {r['time_s']:7.1f} s", flush=True)
    return rows


def table(rows):
    head = "| anatomy | SNR dB | method | found (RoA>=0.9) | oracle-identifiable | yield | false | dup | time s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        y = "-" if r["yield_90"] is None else f"{r['yield_90']:.2f}"
        lines.append(f"| {r['anatomy']} | {r['snr_db']} | {r['method']} | {r['found_90']} | {r['identifiable']} | {y} | "
                     f"{r['false']} | {r['duplicates']} | {r['time_s']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anatomies", nargs="+", default=["biceps_brachii", "tibialis_anterior"])
    ap.add_argument("--snrs", nargs="+", default=["inf", "20", "10"])
    ap.add_argument("--methods", nargs="+", default=["oracle", "cbss"])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tissue", default=None,
                    help="model mismatch: simulate with these layer values, e.g. "
                         "'fat_thickness_mm=4.5,muscle_conductivity_radial=0.15' (the inversion keeps the anatomy file's)")
    ap.add_argument("--json", default="results/bench_decompose.json")
    a = ap.parse_args(argv)
    tissue = None
    if a.tissue:
        tissue = {k: float(v) for k, v in (kv.split("=") for kv in a.tissue.split(","))}
    rows = run(a.anatomies, a.snrs, a.methods, a.duration, a.n_units, a.seed, tissue=tissue)
    print(table(rows))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(metrics._jsonable({"config": vars(a), "rows": rows}), indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
