"""``bmiss qemg`` (MUAP table and figures) and ``bmiss classify`` (ALS / control / myopathy).

Imports nothing heavy at import time: the handlers import their work.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["register", "cmd_qemg", "cmd_classify", "plot_units"]

_COLS = ("record", "subject", "diagnosis", "unit", "n_discharges", "rate_hz", "idi_cov", "duration_ms",
         "amplitude_uv", "area_uvms", "phases", "turns", "thickness_ms", "size_index", "onset_ms", "end_ms")


def _load(path):
    from ..errors import BmissFileError
    from ..io import load_recording

    rec = load_recording(path)
    if rec.n_channels != 1:
        raise BmissFileError(f"{path}: needle analysis needs a single-channel recording; this one has "
                             f"{rec.n_channels} channels")
    rec.meta.setdefault("record", Path(path).stem)
    rec.meta.setdefault("subject", rec.meta["record"])
    return rec


def _progress(items, quiet: bool, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, disable=quiet or len(items) < 2, file=sys.stderr)


def plot_units(dec, rows, path, title: str = ""):
    """Figure of one recording's units: templates (left), a 1-s excerpt with discharges (right)."""
    import numpy as np

    from ..figures import _COLOURS, _finish, _new_figure

    fig = _new_figure((11, 4.5))
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 2])
    t_ms = (np.arange(dec.templates.shape[1]) - dec.onset) * 1e3 / dec.fs
    for u, (tpl, r) in enumerate(zip(dec.templates, rows)):
        c = _COLOURS[u % len(_COLOURS)]
        ax1.plot(t_ms, tpl, color=c, lw=1, label=f"U{u} {r['duration_ms']:.1f} ms, {r['phases']} ph")
    ax1.set(xlabel="time from discharge (ms)", ylabel="µV", title="MUAP templates (median)")
    if len(rows) <= 10:
        ax1.legend(fontsize=6)
    n = len(dec.x)
    a = 0
    if dec.n_units:
        allsp = np.concatenate(dec.spikes)
        if len(allsp):  # the 1-s window holding most discharges
            counts = np.histogram(allsp, bins=np.arange(0, n + int(dec.fs), int(dec.fs) // 2))[0]
            a = int(np.argmax(counts[:-1] + counts[1:]) * (int(dec.fs) // 2))
    b = min(n, a + int(dec.fs))
    t = np.arange(a, b) / dec.fs
    ax2.plot(t, dec.x[a:b], color="0.4", lw=0.5)
    top = float(np.max(np.abs(dec.x[a:b]))) if b > a else 1.0
    for u, sp in enumerate(dec.spikes):
        s = sp[(sp >= a) & (sp < b)]
        ax2.plot(s / dec.fs, np.full(len(s), top * (1.05 + 0.05 * u)), "|", color=_COLOURS[u % len(_COLOURS)], ms=6)
    ax2.set(xlabel="time (s)", ylabel="µV", title=f"{title} discharges ({dec.n_units} units)")
    return _finish(fig, path)


def cmd_qemg(a) -> int:
    import numpy as np

    from ..cli import _check_outputs
    from ..files import write_text
    from .features import analyze_recording

    recs = [Path(r) for r in a.recordings]
    outs = []
    if a.out:
        outs.append(Path(a.out))
    figdir = Path(a.figures) if a.figures else None
    if figdir is not None:
        if figdir.exists() and not figdir.is_dir():
            raise NotADirectoryError(f"--figures {figdir} is a file; give a folder")
        outs += [figdir / f"{r.stem}_muaps.png" for r in recs]
    _check_outputs(outs, a.force, inputs=recs)
    lines = [",".join(_COLS)]
    print(f"{'record':14s} {'subject':9s} {'units':>5s} {'dur ms':>7s} {'amp µV':>7s} {'phases':>6s} "
          f"{'poly %':>6s} {'SI':>6s} {'rate Hz':>7s}")
    for path in _progress(recs, a.quiet, "qemg"):
        rec = _load(path)
        dec, rows, s = analyze_recording(rec)
        name, subj = rec.meta["record"], rec.meta["subject"]
        for r in rows:
            vals = {"record": name, "subject": subj, "diagnosis": rec.meta.get("diagnosis", ""), **r}
            lines.append(",".join(f"{vals[c]:.4g}" if isinstance(vals[c], float) else str(vals[c]).replace(",", ";")
                                  for c in _COLS))
        print(f"{name:14s} {subj:9s} {len(rows):5d} {s['duration_ms_median']:7.2f} {s['amplitude_uv_median']:7.0f} "
              f"{s['phases_mean']:6.2f} {100 * s['polyphasic_share'] if np.isfinite(s['polyphasic_share']) else np.nan:6.1f} "
              f"{s['size_index_median']:6.2f} {s['rate_hz_median']:7.2f}")
        if figdir is not None:
            figdir.mkdir(parents=True, exist_ok=True)
            plot_units(dec, rows, figdir / f"{path.stem}_muaps.png", title=name)
    if a.out:
        write_text(a.out, "\n".join(lines) + "\n", force=a.force)
        print(f"wrote {a.out} ({len(lines) - 1} MUAPs)")
    if figdir is not None:
        print(f"wrote {len(recs)} figure(s) to {figdir}")
    return 0


def cmd_classify(a) -> int:
    import numpy as np

    from ..cli import _check_outputs
    from ..files import write_json
    from .classify import CLASSES, load_classifier, subject_logprob

    recs = [Path(r) for r in a.recordings]
    if a.json:
        _check_outputs([a.json], a.force, inputs=recs)
    clf = load_classifier(a.weights)
    per_rec, by_subject = [], {}
    head = "  ".join(f"{c:>8s}" for c in CLASSES)
    print(f"{'record':14s} {'subject':9s} {'model':9s} {head}  predicted")
    for path in _progress(recs, a.quiet, "classify"):
        rec = _load(path)
        p = clf.predict(rec)
        name, subj = rec.meta["record"], rec.meta["subject"]
        per_rec.append({"record": name, "subject": subj, "diagnosis": rec.meta.get("diagnosis"),
                        **{m: dict(zip(CLASSES, map(float, v))) for m, v in p.items()}})
        by_subject.setdefault(subj, []).append(p)
        for m, v in p.items():
            print(f"{name:14s} {subj:9s} {m:9s} " + "  ".join(f"{x:8.3f}" for x in v) + f"  {CLASSES[int(np.argmax(v))]}")
    print("per subject (mean log-probability over its recordings):")
    per_subj = []
    for subj, ps in by_subject.items():
        row = {"subject": subj, "n_recordings": len(ps)}
        for m in ps[0]:
            v = np.exp(subject_logprob(np.log(np.stack([p[m] for p in ps]) + 1e-12)))
            row[m] = dict(zip(CLASSES, map(float, v)))
            print(f"{'':14s} {subj:9s} {m:9s} " + "  ".join(f"{x:8.3f}" for x in v) + f"  {CLASSES[int(np.argmax(v))]}")
        per_subj.append(row)
    if a.json:
        write_json(a.json, {"recordings": per_rec, "subjects": per_subj, "weights": str(a.weights or "shipped")},
                   force=a.force)
        print(f"wrote {a.json}")
    return 0


def register(sub) -> None:
    """Add ``qemg`` and ``classify`` to the bmiss command line."""
    q = sub.add_parser("qemg", help="needle EMG: MUAP detection, templates and clinical features (quantitative EMG)",
                       description="Detect and decompose MUAPs of single-channel needle recordings (WFDB .hea, "
                                   "or any single-channel bmiss recording) and measure duration, amplitude, "
                                   "area, phases, turns, size index and discharge rate per unit.")
    q.add_argument("recordings", nargs="+", metavar="REC")
    q.add_argument("--out", help="CSV file: one row per MUAP (unit) of every recording")
    q.add_argument("--figures", metavar="DIR", help="folder for one figure per recording (templates, discharges)")
    q.add_argument("--force", action="store_true", help="overwrite existing outputs")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_qemg)
    c = sub.add_parser("classify", help="needle EMG: ALS / control / myopathy probabilities per recording and subject",
                       description="Class probabilities from the shipped models trained on EMGlab N2001 (biceps "
                                   "brachii, concentric needle): features (logistic), cnn (1-D CNN), combined. "
                                   "The subject comes from the file name (N2001A01BB01 -> N2001A01).")
    c.add_argument("recordings", nargs="+", metavar="REC")
    c.add_argument("--weights", help="a classifier .npz (default: the shipped one)")
    c.add_argument("--json", help="write the probabilities to this JSON file")
    c.add_argument("--force", action="store_true", help="overwrite an existing --json")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_classify)
