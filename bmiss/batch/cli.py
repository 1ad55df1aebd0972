"""``bmiss batch INPUT... --out DIR``: decompose a study on Dask (see :mod:`bmiss.batch`).

Exit status: 0 every recording done (or already done); 10 + N when N recordings failed (N capped
at 99, so 109 means 99 or more; the failures are listed in the study table and batch.json);
2 a bad argument (nothing ran); 130 interrupted (finished recordings are kept: rerun to resume).
"""
from __future__ import annotations

import sys


def register(sub) -> None:
    from ..cli import SEED_MAX, _int_in

    b = sub.add_parser("batch", help="decompose many recordings (files, folders, globs, EMG-BIDS) on Dask, "
                                     "resumable, with a study table and report",
                       description="Decompose every recording of INPUT (files, folders, globs, an EMG-BIDS "
                       "dataset) as Dask tasks into DIR; a rerun resumes. Exit status: 0 all done; 10+N when N "
                       "recordings failed (capped at 109); 2 bad arguments; 130 interrupted.")
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="recording files, folders (searched recursively), globs ('data/*/*.otb+') or an "
                        "EMG-BIDS dataset (sub-*/[ses-*/]emg/*_emg.*)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (a rerun into it resumes)")
    b.add_argument("--method", choices=("bmiss", "cbss", "oracle"), default="bmiss")
    b.add_argument("--n-iter", type=_int_in(1, 10000), default=None, help="cbss: outer iterations; bmiss: rounds")
    b.add_argument("--anatomy", default=None, help="bmiss: anatomy for the forward model")
    b.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="any field of the method's settings, as for bmiss decompose (repeatable)")
    b.add_argument("--seed", type=_int_in(0, SEED_MAX), default=None, help=f"0..{SEED_MAX}")
    b.add_argument("--export", action="append", default=[], metavar="FORMAT",
                   choices=("csv", "json", "tsv", "openhdemg", "mu-csv", "mu-json", "drive-csv", "drive-json"),
                   help="also write this export per recording (repeatable; formats of bmiss export)")
    b.add_argument("--no-figures", action="store_true", help="no per-recording figure")
    b.add_argument("--no-report", action="store_true", help="no study tables or report.html")
    b.add_argument("--workers", type=_int_in(1, 4096), default=None,
                   help="local worker processes (default: one per core, at most one per recording)")
    b.add_argument("--threads", type=_int_in(1, 1024), default=None,
                   help="cores per local worker for XLA/BLAS (default: cores / workers)")
    b.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://host:8786) instead of a local cluster; DIR must be "
                        "shared with its workers")
    b.add_argument("--retries", type=_int_in(0, 100), default=1,
                   help="retries of a recording whose worker process died (default 1)")
    b.add_argument("--force", action="store_true",
                   help="redo recordings done with other settings; overwrite files in a non-batch folder")
    b.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    b.set_defaults(func=cmd_batch)


def cmd_batch(a) -> int:
    from ..cli import _parse_settings, method_kw
    from . import batch

    settings = method_kw(a.method, a.seed, a.n_iter)
    if a.anatomy is not None:
        settings["anatomy"] = a.anatomy
    settings.update(_parse_settings(a.setting, a.method))  # typed and checked per field
    res = batch(a.inputs, a.out, method=a.method, settings=settings, exports=a.export, figures=not a.no_figures,
                workers=a.workers, threads=a.threads, scheduler=a.scheduler, retries=a.retries, force=a.force,
                report=not a.no_report, progress=not a.quiet)
    n_units = sum((s.get("recording") or {}).get("n_units") or 0 for s in res.status.values())
    print(f"bmiss batch: {len(res.done)} done ({len(res.skipped)} skipped as already done), {len(res.failed)} "
          f"failed, {n_units} MUs, {res.wall_s:.1f} s; results in {res.out}")
    for k in res.failed:
        print(f"  failed: {k}: {res.status[k].get('error')}", file=sys.stderr)
    if "report_html" in res.files:
        print(f"report: {res.files['report_html']}")
    return res.exit_status
