"""Study tables and the offline HTML report of a batch (:func:`write_study`)."""
from __future__ import annotations

import base64
import csv
import html
import io as _io
import math
from pathlib import Path

from ..files import atomic_write, write_text

#: recording-table columns, in order (BIDS entity columns are inserted after ``path``)
RECORDING_COLUMNS = ("key", "path", "status", "error", "n_units", "sil_median", "sil_min", "pnr_median_db",
                     "cov_isi_median", "rate_median_hz", "n_channels", "fs_hz", "duration_s", "load_s",
                     "decompose_s", "total_s", "host", "finished_utc")
#: study distributions drawn in the report (column of the unit table -> axis label)
DISTRIBUTIONS = {"sil": "SIL", "pnr_db": "PNR (dB)", "cov_isi": "CoV of ISI", "rate_hz": "mean discharge rate (Hz)",
                 "DR_rec": "rate at recruitment (pps)", "rel_RT": "recruitment threshold (ref)"}


def _entity_cols(statuses) -> list[str]:
    from . import BIDS_ENTITIES

    present = {k for s in statuses.values() for k in (s.get("entities") or {})}
    return [v for v in BIDS_ENTITIES.values() if v in present]


def tables(statuses: dict) -> tuple[list[dict], list[dict]]:
    """(recording rows, unit rows) of a batch's status dicts (see the module :mod:`bmiss.batch`)."""
    ents = _entity_cols(statuses)
    recs, units = [], []
    for key, s in statuses.items():
        e = s.get("entities") or {}
        base = {"key": key, "path": s.get("path"), **{c: e.get(c) for c in ents}}
        t = s.get("times") or {}
        row = dict(base, status=s.get("status"), error=s.get("error"), **(s.get("recording") or {}),
                   load_s=t.get("load_s"), decompose_s=t.get("decompose_s"), total_s=t.get("total_s"),
                   host=s.get("host"), finished_utc=s.get("finished_utc"))
        if row.get("n_units") is None and s.get("status") != "done":
            row["n_units"] = None
        recs.append(row)
        for u in s.get("units") or ():
            units.append(dict(base, **u))
    order = ["key", "path"] + ents + list(RECORDING_COLUMNS[2:])
    recs = [{**{c: r.get(c) for c in order}, **{k: v for k, v in r.items() if k not in order}} for r in recs]
    return recs, units


def _columns(rows) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _cell(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v


def write_csv(path, rows, columns=None) -> Path:
    """Rows (dicts) as CSV, written atomically; missing values empty."""
    cols = columns or _columns(rows)
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _cell(r.get(c)) for c in cols})
    return write_text(path, buf.getvalue())


def write_parquet(path, rows, columns=None) -> Path | None:
    """Rows as Parquet when pyarrow is installed (``None`` otherwise), written atomically."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    cols = columns or _columns(rows)
    data = {c: [r.get(c) for r in rows] for c in cols}
    for c, v in data.items():  # one type per column: numbers stay numbers, anything mixed is text
        kinds = {type(x) for x in v if x is not None}
        if kinds and not kinds <= {int, float} and not kinds <= {str} and not kinds <= {bool}:
            data[c] = [None if x is None else str(x) for x in v]
        elif kinds == {int, float}:
            data[c] = [None if x is None else float(x) for x in v]
    table = pa.table(data) if cols else pa.table({"key": pa.array([], pa.string())})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def distributions_figure(units: list[dict], recs: list[dict], path):
    """Histograms of the study's MU quality, discharge rates and MU properties (one panel each)."""
    import numpy as np

    from .. import figures

    panels = [("n_units", "MUs per recording", [r.get("n_units") for r in recs if r.get("status") == "done"])]
    for k, label in DISTRIBUTIONS.items():
        panels.append((k, label, [u.get(k) for u in units]))
    skip = set(DISTRIBUTIONS) | {"key", "path", "unit", "n_spikes", "n_runs", "first_discharge_s",
                                 "last_discharge_s", "subject", "session", "task", "acquisition", "run", "recording"}
    for k in _columns(units):  # MU properties of a model-based method, other recruitment fields
        if k not in skip and k not in ("COV_isi", "DR_all", "DR_derec", "rel_DERT", "rate_at_RT", "DR_all_steady"):
            panels.append((k, k, [u.get(k) for u in units]))
    vals = []
    for k, label, v in panels:
        a = np.asarray([x for x in v if isinstance(x, (int, float)) and math.isfinite(x)], np.float64)
        if len(a):
            vals.append((label, a))
    n = max(len(vals), 1)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig = figures._new_figure((3.4 * ncol, 2.5 * nrow))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, (label, a) in zip(axes, vals):
        ax.hist(a, bins=min(30, max(5, int(np.sqrt(len(a))) + 1)), color="#1f77b4", alpha=0.85)
        ax.set_xlabel(label)
        ax.set_ylabel("count")
        ax.set_title(f"n={len(a)}, median {np.median(a):.3g}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(vals):]:
        ax.axis("off")
        if not vals:
            ax.text(0.5, 0.5, "no units found", ha="center", va="center", transform=ax.transAxes)
    return figures._finish(fig, path)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.3g}"
    return html.escape(str(v))


def write_html(path, recs, units, *, title: str, settings: dict, figure: Path | None, per_rec_figs: dict) -> Path:
    """A self-contained HTML page (the study figure embedded; per-recording figures linked by
    relative path, so keep the folder together)."""
    out = Path(path)
    done = [r for r in recs if r.get("status") == "done"]
    failed = [r for r in recs if r.get("status") != "done"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td.l,th{text-align:left}"
             ".fail{color:#b00}img.th{max-width:560px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(recs)} recordings: <b>{len(done)} done</b>, <b class='fail'>{len(failed)} failed</b>; "
             f"{len(units)} motor units in all.</p>",
             f"<p>Settings: <code>{html.escape(str(settings))}</code>. Tables: <a href='study_recordings.csv'>"
             "study_recordings.csv</a>, <a href='study_units.csv'>study_units.csv</a>.</p>"]
    if failed:
        parts.append("<h2>Failed</h2><table><tr><th>recording</th><th>error</th></tr>")
        parts += [f"<tr><td class='l'>{_fmt(r['key'])}</td><td class='l fail'>{_fmt(r.get('error'))}</td></tr>"
                  for r in failed]
        parts.append("</table>")
    if figure is not None and Path(figure).exists():
        b64 = base64.b64encode(Path(figure).read_bytes()).decode()
        parts.append("<h2>Study distributions</h2>"
                     f"<img alt='distributions' src='data:image/png;base64,{b64}' style='max-width:100%'>")
    cols = [c for c in ("key", "subject", "session", "task", "run", "n_units", "sil_median", "pnr_median_db",
                        "cov_isi_median", "rate_median_hz", "duration_s", "decompose_s", "total_s")
            if any(c in r for r in recs)]
    parts.append("<h2>Recordings</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for r in recs:
        cls = "" if r.get("status") == "done" else " class='fail'"
        parts.append(f"<tr{cls}>" + "".join(f"<td{' class=l' if c == 'key' else ''}>{_fmt(r.get(c))}</td>"
                                            for c in cols) + "</tr>")
    parts.append("</table><h2>Per recording</h2>")
    for r in done:
        fig = per_rec_figs.get(r["key"])
        parts.append(f"<h3>{_fmt(r['key'])}</h3><p>{_fmt(r.get('n_units'))} MUs, median SIL "
                     f"{_fmt(r.get('sil_median'))}, median PNR {_fmt(r.get('pnr_median_db'))} dB</p>")
        if fig is not None and fig.exists():
            rel = fig.relative_to(out.parent).as_posix()
            parts.append(f"<a href='{html.escape(rel)}'><img class='th' loading='lazy' src='{html.escape(rel)}' "
                         f"alt='{_fmt(r['key'])}'></a>")
    parts.append("</body></html>\n")
    return write_text(out, "\n".join(parts))


def write_study(out: Path, jobs, statuses: dict, *, method: str, settings: dict, figures: bool = True) -> dict:
    """Write the study tables (CSV; Parquet with pyarrow), the distributions figure and
    ``report.html`` into ``out``; returns ``{name: path}``."""
    from . import _paths

    recs, units = tables(statuses)
    files = {"recordings_csv": write_csv(out / "study_recordings.csv", recs),
             "units_csv": write_csv(out / "study_units.csv", units, _columns(units) or ["key", "unit"])}
    for name, rows in (("recordings_parquet", recs), ("units_parquet", units)):
        p = write_parquet(out / f"study_{name.split('_')[0]}.parquet", rows)
        if p is not None:
            files[name] = p
    fig = distributions_figure(units, recs, out / "report_distributions.png")
    files["distributions_png"] = out / "report_distributions.png"
    per = {j.key: _paths(out, j.key, method)["figure"] for j in jobs} if figures else {}
    files["report_html"] = write_html(out / "report.html", recs, units, title=f"bmiss batch: {method}",
                                      settings={"method": method, **settings}, figure=files["distributions_png"],
                                      per_rec_figs=per)
    del fig
    return files
