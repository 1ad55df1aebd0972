"""MU properties of the decompositions' own units, from ``bench_mismatch.py`` JSONs.

Per physical-family row (the Hermite family has no physical truth; the real recording none at
all) and pooled: the RMSE of what a method reported for its matched units (depth, x, IZ in mm, log
fibres, CV in m/s, fibre length in % of the true length), the share of true values inside its
68 % and 95 % intervals, and how many units each interval rule served (``std_from``).

    python experiments/mismatch_props.py results/bench_mismatch_s9.json results/bench_mismatch_seed1_s9.json \
        --json results/mismatch_props_s9.json

``--check-z 2.5 2 1.5`` adds what a lower model-check threshold would have reported (runs since
the ninth session record the posterior's mean beside the reported value).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bmiss import metrics  # noqa: E402
from bmiss.conductor import PARAM_NAMES  # noqa: E402
from bmiss.files import provenance, write_json  # noqa: E402

NO_TRUTH = ("hermite", "real")
COLUMNS = ("depth mm", "x mm", "log fibres", "IZ mm", "CV m/s", "length %")


def _summary(units: list) -> dict:
    """RMSE and interval coverage (``metrics.property_errors``) of ``units``, length in % of the
    true length (its estimate and interval scaled by 100 / the true length per unit)."""
    n = len(PARAM_NAMES)
    T = np.array([u["truth"] for u in units], np.float64).reshape(-1, n)
    E = T + np.array([u["err"] for u in units], np.float64).reshape(-1, n)
    Q = np.array([u["interval"] if u["interval"] is not None else np.full((n, 4), np.nan) for u in units],
                 np.float64).reshape(-1, n, 4)
    scale = 100.0 / T[:, 5]
    T[:, 5], E[:, 5], Q[:, 5] = 100.0, E[:, 5] * scale, Q[:, 5] * scale[:, None]
    rules = {}
    for u in units:
        rules[str(u["std_from"])] = rules.get(str(u["std_from"]), 0) + 1
    pe = metrics.property_errors(E, T, COLUMNS, intervals=Q) if units else {}
    get = lambda k: {c: round(pe[c][k], 3) for c in COLUMNS} if units else None  # noqa: E731
    return {"n_units": len(units), "n_interval": int(pe[COLUMNS[0]]["n_interval"]) if units else 0,
            "rules": rules, "rmse": get("rmse"), "cover68": get("cover68"), "cover95": get("cover95")}


def check_z_study(units: list, levels) -> dict:
    """What-if of the model check's threshold ``unit_fit.check_z`` below the one the run used: a
    combined-rule unit whose fit lies more than z posterior std from its posterior's mean in any
    property would report the posterior's mean. Returns {z: {"moved", "rmse"}} over ``units``
    (runs that record ``post_mean``; a higher z than the run's cannot be studied: the replaced
    units' fits are not recorded)."""
    out = {}
    for z in levels:
        E, moved = [], 0
        for u in units:
            e, t = np.asarray(u["err"], np.float64), np.asarray(u["truth"], np.float64)
            if u["std_from"] == "laplace + posterior" and u.get("post_mean") is not None:
                pm, ps = np.asarray(u["post_mean"], np.float64), np.asarray(u["post_std"], np.float64)
                if np.nanmax(np.abs(e + t - pm) / np.maximum(ps, 1e-12)) > z:
                    e, moved = pm - t, moved + 1
            e = e.copy()
            e[5] = 100.0 * e[5] / t[5]
            E.append(e)
        rmse = np.sqrt(np.nanmean(np.array(E).reshape(-1, len(PARAM_NAMES)) ** 2, 0))
        out[str(z)] = {"moved": moved, "rmse": dict(zip(COLUMNS, rmse.round(3).tolist()))}
        print(f"check_z {z:g}: {moved} more units report the posterior; RMSE "
              + "  ".join(f"{c} {v:.2f}" for c, v in zip(COLUMNS, rmse)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", nargs="+", help="bench_mismatch JSON(s)")
    ap.add_argument("--method", default="bmiss")
    ap.add_argument("--check-z", type=float, nargs="*", default=[],
                    help="model-check thresholds (below the run's) to study on the pooled units")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    out = {"provenance": provenance(**vars(a)), "files": {}}
    pooled = []
    for path in a.bench:
        doc = json.load(open(path))
        rows, every = {}, []
        for r in doc["rows"]:
            if r.get("recording") in NO_TRUTH:
                continue
            pu = ((r.get("methods") or {}).get(a.method) or {}).get("property_units") or []
            rows[f"{r['recording']} {r.get('snr_db', '')}".strip()] = _summary(pu)
            every += pu
        out["files"][path] = {"rows": rows, "pooled": _summary(every)}
        pooled += every
        print(path)
        for k, v in {**rows, "pooled": out["files"][path]["pooled"]}.items():
            rm = v["rmse"] or {}
            print(f"  {k:11s} n {v['n_units']:3d}  RMSE " + "  ".join(f"{c} {rm.get(c, float('nan')):.2f}" for c in COLUMNS))
    out["pooled"] = _summary(pooled)
    p = out["pooled"]
    print(f"all files, {p['n_units']} units: RMSE " + "  ".join(f"{c} {p['rmse'][c]:.2f}" for c in COLUMNS))
    print("  in 68 % / 95 %: " + "  ".join(f"{c} {p['cover68'][c]:.0%} / {p['cover95'][c]:.0%}" for c in COLUMNS))
    if a.check_z:
        out["check_z"] = check_z_study(pooled, a.check_z)
    if a.json:
        write_json(a.json, out)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
