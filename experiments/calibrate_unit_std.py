"""Calibrate ``UnitFitSettings.posterior_scale`` and ``posterior_scale68``: the factors on the
amortized posterior's std in a fitted unit's combined width sqrt(Laplace² + (k x posterior std)²),
per property and interval level.

    python experiments/bench_unit_props.py --cache /work/cache_posterior --seed 1 --variants bank:10:lm \
        --json results/bench_unit_props_seed1_s7.json
    python experiments/calibrate_unit_std.py results/bench_unit_props_seed1_s7.json \
        --json results/calibrate_unit_std_s7.json

The calibration set is a benchmark run on recordings of another seed than the evaluation (seed 0:
``results/bench_unit_props_s7.json``), so the coverage reported there is held out. Units: every
fitted unit whose posterior is in its domain and that the model check keeps on the fit (those are
the units the combined width describes). Per property, k95 (``posterior_scale``) is the smallest
value at which the intervals fit +- 1.96 x width hold 95 % of the true values, and k68
(``posterior_scale68``) the smallest at which fit +- 1 x width hold 68 % (bisection; coverage only
grows with k); k = 0 where the Laplace width alone already holds that share. The errors have heavy
tails: a k that gives 68 % at +- 1 width gave only 81-92 % at +- 1.96 on this set, so each level
gets its own k.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bmiss.conductor import PARAM_NAMES  # noqa: E402
from bmiss.files import provenance, write_json  # noqa: E402


def _arr(v):
    return np.array([[np.nan if x is None else x for x in row] for row in v], np.float64)


def coverage(err, lap, post, k, z):
    return float(np.mean(np.abs(err) <= z * np.sqrt(lap**2 + (k * post) ** 2)))


def solve_k(err, lap, post, target=0.95, z=1.96, hi=10.0) -> float:
    """Smallest k in [0, hi] with coverage(k) >= target at z (bisection)."""
    if coverage(err, lap, post, 0.0, z) >= target:
        return 0.0
    lo = 0.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if coverage(err, lap, post, mid, z) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", nargs="+", help="bench_unit_props JSON(s) with per-unit arrays")
    ap.add_argument("--variant", default="fit:bank:10:lm")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    cols = {k: [] for k in ("fit", "laplace_std", "posterior_std", "truth")}
    per_rec = []
    for path in a.bench:
        for r in json.load(open(path))["rows"]:
            u = r["variants"][a.variant]["units"]
            keep = np.array(u["in_domain"]) & ~np.array(u["to_posterior"]) & np.isfinite(_arr(u["fit"])).all(1)
            per_rec.append({"recording": r["recording"], "file": path, "n_units": int(keep.sum())})
            for k in cols:
                cols[k].append(_arr(u[k])[keep])
    est, lap, ps, truth = (np.concatenate(cols[k]) for k in ("fit", "laplace_std", "posterior_std", "truth"))
    err = est - truth
    out = {"provenance": provenance(**vars(a)), "n_units": int(len(err)), "recordings": per_rec, "properties": {}}
    for p, name in enumerate(PARAM_NAMES):
        e, lp, pp = err[:, p], lap[:, p], ps[:, p]
        k95, k68 = solve_k(e, lp, pp, 0.95, 1.96), solve_k(e, lp, pp, 0.68, 1.0)
        out["properties"][name] = {"k": k95, "k68": k68, "cover68_at_k": coverage(e, lp, pp, k95, 1.0),
                                   "cover95_at_k": coverage(e, lp, pp, k95, 1.96),
                                   "cover68_at_k68": coverage(e, lp, pp, k68, 1.0),
                                   "cover68_at_1": coverage(e, lp, pp, 1.0, 1.0),
                                   "cover95_at_1": coverage(e, lp, pp, 1.0, 1.96)}
        r = out["properties"][name]
        print(f"{name:11s} k95 {k95:.3f} (68/95 % at it: {r['cover68_at_k']:.2f} / {r['cover95_at_k']:.2f})  "
              f"k68 {k68:.3f}   at k = 1: {r['cover68_at_1']:.2f} / {r['cover95_at_1']:.2f}")
    out["posterior_scale"] = [round(out["properties"][n]["k"], 2) for n in PARAM_NAMES]
    out["posterior_scale68"] = [round(out["properties"][n]["k68"], 2) for n in PARAM_NAMES]
    print("posterior_scale =", tuple(out["posterior_scale"]), " posterior_scale68 =", tuple(out["posterior_scale68"]),
          f"({len(err)} units)")
    if a.json:
        write_json(a.json, out)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
