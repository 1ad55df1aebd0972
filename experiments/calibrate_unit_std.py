"""Calibrate ``UnitFitSettings.posterior_scale`` and ``posterior_scale68``: the factors on the
amortized posterior's std in a fitted unit's combined width sqrt(Laplace² + (k x posterior std)²),
per property and interval level.

    python experiments/bench_unit_props.py --cache /work/cache_posterior --seed 1 --variants bank:10:lm \
        --json results/bench_unit_props_seed1_s7.json
    python experiments/calibrate_unit_std.py results/bench_unit_props_seed1_s7.json \
        --json results/calibrate_unit_std_s7.json

The calibration set is a benchmark run on recordings of another seed than the evaluation (seed 0:
``results/bench_unit_props_s7.json``), so the coverage reported there is held out. It may also be
(or include) a ``bench_mismatch.py`` run: the decompositions' own matched units
(``property_units``; the physical-family rows), whose errors are what the pipeline's intervals
must cover; ``--evaluate`` then reports the coverage of another seed's run, as reported and with
the new factors:

    python experiments/bench_mismatch.py --recordings tissue iap short rotated hermite --methods oracle bmiss \
        --duration 10 --n-units 60 --no-fit --seed 1 --json results/bench_mismatch_seed1_s8.json
    python experiments/calibrate_unit_std.py results/bench_mismatch_seed1_s8.json \
        --evaluate results/bench_mismatch_s8.json --json results/calibrate_unit_std_s8.json Units: every
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

from bmiss import metrics  # noqa: E402
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


NON_PHYSICAL = ("hermite",)  # bench_mismatch's MUAP family without physical parameters: no truth to cover


def _matched_units(path: str, method: str):
    """A bench_mismatch JSON's matched units of ``method`` (every interval rule) on the
    physical-family rows: [(row, unit)], and the k95 the run used."""
    doc = json.load(open(path))
    k_run = np.asarray(doc["unit_fit_scales"]["posterior_scale"], np.float64)
    out = []
    for r in doc["rows"]:
        if r.get("recording") in NON_PHYSICAL:
            continue
        m = (r.get("methods") or {}).get(method) or {}
        out += [(r, u) for u in m.get("property_units", [])]
    return out, k_run


def _laplace(u, k_run):
    """A combined-rule unit's Laplace std [6]: recorded (``laplace_std``, runs since the ninth
    session), else recovered from the reported std and the factor k95 the run used."""
    if u.get("laplace_std") is not None:
        return np.asarray(u["laplace_std"], np.float64)
    std, post = np.asarray(u["std"], np.float64), np.asarray(u["post_std"], np.float64)
    return np.sqrt(np.clip(std**2 - (k_run * post) ** 2, 0, None))


def _read(paths, variant, method):
    """(errors, Laplace std, posterior std [n, 6], per-recording counts) of the fitted units whose
    interval is the combined one: from bench_unit_props JSONs (true discharges) or bench_mismatch
    JSONs (the decompositions' own units, ``property_units``; the Laplace std is recovered from the
    reported std and the factor the run used)."""
    cols = {k: [] for k in ("err", "lap", "post")}
    per_rec = []
    for path in paths:
        doc = json.load(open(path))
        if doc["rows"] and "variants" in doc["rows"][0]:
            for r in doc["rows"]:
                u = r["variants"][variant]["units"]
                keep = np.array(u["in_domain"]) & ~np.array(u["to_posterior"]) & np.isfinite(_arr(u["fit"])).all(1)
                per_rec.append({"recording": r["recording"], "file": path, "n_units": int(keep.sum())})
                cols["err"].append((_arr(u["fit"]) - _arr(u["truth"]))[keep])
                cols["lap"].append(_arr(u["laplace_std"])[keep])
                cols["post"].append(_arr(u["posterior_std"])[keep])
            continue
        units, k_run = _matched_units(path, method)
        counts = {}
        for r, u in units:
            if u["std_from"] != "laplace + posterior":
                continue
            key = f"{r['recording']} {r.get('snr_db', '')}".strip()
            counts[key] = counts.get(key, 0) + 1
            post = np.asarray(u["post_std"])
            cols["err"].append(np.asarray(u["err"])[None])
            cols["lap"].append(_laplace(u, k_run)[None])
            cols["post"].append(post[None])
        per_rec += [{"recording": k, "file": path, "n_units": v} for k, v in counts.items()]
    return (*(np.concatenate(cols[k]) for k in ("err", "lap", "post")), per_rec)


def evaluate(paths, method, k95, k68) -> dict:
    """Coverage of every matched unit's 68 % and 95 % intervals in bench_mismatch JSON(s), as reported
    (``as_run``) and with the combined units' intervals rebuilt with ``k95`` / ``k68`` as the pipeline
    builds them (``with_k``); units under another rule (posterior quantiles, Laplace only) keep their
    reported interval. Coverage through :func:`bmiss.metrics.property_errors`."""
    from bmiss.pipeline.properties import _symmetric  # the pipeline's interval rule

    k95, k68 = np.asarray(k95, np.float64), np.asarray(k68, np.float64)
    T, E, Q = [], [], {"as_run": [], "with_k": []}
    n_comb = 0
    for path in paths:
        units, k_run = _matched_units(path, method)
        for _, u in units:
            if u.get("interval") is None:
                continue
            t = np.asarray(u["truth"], np.float64)
            q = np.asarray(u["interval"], np.float64)
            T.append(t)
            E.append(t + np.asarray(u["err"], np.float64))
            Q["as_run"].append(q)
            if u["std_from"] == "laplace + posterior":
                n_comb += 1
                lap, post = _laplace(u, k_run), np.asarray(u["post_std"], np.float64)
                q = _symmetric(E[-1], np.hypot(lap, k95 * post), np.hypot(lap, k68 * post))
            Q["with_k"].append(q)
    out = {"files": list(paths), "n_units": len(T), "n_combined": n_comb}
    for k, q in Q.items():
        if not q:
            continue
        pe = metrics.property_errors(np.array(E), np.array(T), PARAM_NAMES, intervals=np.array(q))
        out[k] = {n: {"cover68": pe[n]["cover68"], "cover95": pe[n]["cover95"], "n": pe[n]["n_interval"]}
                  for n in PARAM_NAMES}
        print(f"held out, {k:6s}: " + "  ".join(f"{n} {out[k][n]['cover68']:.2f}/{out[k][n]['cover95']:.2f}"
                                              for n in PARAM_NAMES))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", nargs="+", help="bench_unit_props JSON(s) with per-unit arrays")
    ap.add_argument("--variant", default="fit:bank:10:lm", help="bench_unit_props: the variant to read")
    ap.add_argument("--method", default="bmiss", help="bench_mismatch: the method whose units to read")
    ap.add_argument("--evaluate", nargs="*", default=[],
                    help="bench_mismatch JSON(s) of another seed: the held-out coverage of the factors found")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    err, lap, ps, per_rec = _read(a.bench, a.variant, a.method)
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
    if a.evaluate:
        out["held_out"] = evaluate(a.evaluate, a.method, out["posterior_scale"], out["posterior_scale68"])
    if a.json:
        write_json(a.json, out)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
