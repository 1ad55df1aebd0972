"""Units the model check hands to the posterior, refitted from the posterior's mean with a wide prior.

Where a unit's fit under the subject model lies > ``check_z`` posterior std from its amortized
posterior (on short fibres the subject model, fitted with ~100-mm fibres, cannot represent a 35-mm
MUAP), the default reports the posterior's mean. This diagnostic refits those units through the
same subject model, started at the posterior's mean, with the population prior on fibre length,
CV and IZ widened to ``--prior`` (length as a fraction of the mean, CV m/s, IZ as a fraction of the
length; the default's is 0.1, 0.5, 0.1), and compares the posterior's and the refit's errors on
the matched units, over all of them and over those whose refit passes the model check. The
pipeline is unchanged: the refit wraps ``bmiss.pipeline.properties.unit_properties`` here only.

    python experiments/diag_posterior_refit.py --recordings short --prior 1.0 1.5 0.3 \
        --json results/diag_posterior_refit.json
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bmiss  # noqa: E402
import bmiss.pipeline.properties as props  # noqa: E402
from bmiss import api, fitting, metrics  # noqa: E402
from bmiss.conductor import PARAM_NAMES  # noqa: E402
from bmiss.files import provenance, write_json  # noqa: E402

from bench_mismatch import RECORDINGS  # noqa: E402

COLUMNS = ("depth mm", "x mm", "log fibres", "IZ mm", "CV m/s", "length %")


def with_refit(prior):
    """``unit_properties`` that also refits the units the model check handed to the posterior and
    records the refit under ``meta["units"][i]["refit"]`` (params in the posterior's IZ frame)."""
    orig = props.unit_properties

    def run(rec, units, subject, settings, *, seed=0, progress=False, anatomy=None):
        extra, meta = orig(rec, units, subject, settings, seed=seed, progress=progress, anatomy=anatomy)
        bad = [i for i, m in enumerate(meta["units"]) if m["std_from"] == "posterior" and m.get("unit_fit") == "fitted"]
        if not bad or subject is None or subject.fit is None:
            return extra, meta
        pa = anatomy if anatomy is not None else subject.anatomy
        dz = float(subject.anatomy.grid.centre_z_mm) - float(pa.grid.centre_z_mm)
        post = lambda i, k: np.array([meta["units"][i]["posterior"][k][n] for n in PARAM_NAMES])  # noqa: E731
        start = np.array([post(i, "mean") for i in bad])
        start[:, 3] += dz  # the fit's IZ frame
        sf = subject.fit
        sf2 = dataclasses.replace(sf, model=dataclasses.replace(sf.model, prior_sd=tuple(prior) + sf.model.prior_sd[3:]))
        uf = fitting.fit_units(sf2, rec, [units[i].spikes for i in bad], settings=settings, seed=seed, start=start)
        for k, i in enumerate(bad):
            p = np.asarray(uf.params[k], np.float64).copy()
            p[3] -= dz
            meta["units"][i]["refit"] = {"params": p.tolist(), "status": uf.status[k],
                                         "off": props.model_check(p, post(i, "mean"), post(i, "std"), settings.check_z)}
        return extra, meta

    return run


def rmse(errs):
    return dict(zip(COLUMNS, np.sqrt(np.nanmean(np.array(errs) ** 2, 0)).round(3).tolist())) if errs else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recordings", nargs="+", default=["short"], choices=sorted(RECORDINGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--snrs", nargs="+", type=float, default=[20.0, 10.0])
    ap.add_argument("--prior", nargs=3, type=float, default=[1.0, 1.5, 0.3])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    props.unit_properties = with_refit(a.prior)
    out = {"provenance": provenance(**vars(a)), "rows": []}
    pooled = {"post": [], "refit": [], "post_pass": [], "refit_pass": []}
    for fam in a.recordings:
        for seed in a.seeds:
            for snr in a.snrs:
                rec = bmiss.simulate("biceps_brachii", duration_s=10, snr_db=snr, seed=seed, n_units=60,
                                     **RECORDINGS[fam])
                dec = api.decompose(rec, method="bmiss", progress=False)
                rep = metrics.evaluate(dec, rec)
                E = {k: [] for k in pooled}
                for ti, j, _ in rep["matched_pairs"]:
                    m = dec.meta["units"][j]
                    if "refit" not in m:
                        continue
                    t = np.asarray(rec.true_params[ti], np.float64)
                    e_post = np.array([m["posterior"]["mean"][n] for n in PARAM_NAMES]) - t
                    e_fit = np.asarray(m["refit"]["params"]) - t
                    for e in (e_post, e_fit):
                        e[5] *= 100.0 / t[5]
                    E["post"].append(e_post)
                    E["refit"].append(e_fit)
                    if not m["refit"]["off"]:
                        E["post_pass"].append(e_post)
                        E["refit_pass"].append(e_fit)
                for k in pooled:
                    pooled[k] += E[k]
                row = {"recording": fam, "seed": seed, "snr_db": snr, "n_checked_out": len(E["post"]),
                       "n_refit_passes": len(E["refit_pass"]), **{f"rmse_{k}": rmse(v) for k, v in E.items()}}
                out["rows"].append(row)
                print(f"{fam} seed {seed} {snr:g} dB: {row['n_checked_out']} units checked out, "
                      f"{row['n_refit_passes']} refits pass; posterior {row['rmse_post']}; refit {row['rmse_refit']}; "
                      f"passing: posterior {row['rmse_post_pass']}, refit {row['rmse_refit_pass']}", flush=True)
    out["pooled"] = {"n_checked_out": len(pooled["post"]), "n_refit_passes": len(pooled["refit_pass"]),
                     **{f"rmse_{k}": rmse(v) for k, v in pooled.items()}}
    print("pooled", out["pooled"])
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
