"""Read single-channel WFDB records (``.hea`` header + signal file) as :class:`bmiss.io.Recording`.

The EMGlab N2001 needle-EMG set (McGill et al., EMGlab, http://www.emglab.net; redistributed by
ChatMED/ALS-EMG, MIT) stores each recording as a WFDB record: a ``.hea`` header (``name n_sig fs
n_samples``, one signal line ``file.bin 16+20 13.1070/uV``) whose ``#key: value`` comment lines
hold the clinical metadata (diagnosis, muscle, level, age, ...), and a format-16 signal file with a
20-byte prefix. The reader uses the ``wfdb`` package (PhysioNet's reference implementation).

The subject and class are not in the header: they come from the EMGlab file name
``N2001<G><SS>BB<RR>`` (G = A ALS, C control, M myopathy; SS subject; RR recording).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import BmissFileError

__all__ = ["load_wfdb", "parse_name", "header_meta", "CLASSES", "GROUP_CLASS"]

CLASSES = ("ALS", "control", "myopathy")
GROUP_CLASS = {"A": "ALS", "C": "control", "M": "myopathy"}
_NAME = re.compile(r"^(?P<set>N\d{4})(?P<group>[ACM])(?P<subj>\d{2})(?P<muscle>[A-Z]{2})(?P<rec>\d{2})$")


def parse_name(name: str) -> dict:
    """Subject, class and recording index from an EMGlab record name (``N2001A01BB01``).

    Returns ``{}`` for names that do not follow the scheme.

    Examples
    --------
    >>> parse_name("N2001A01BB03")["subject"], parse_name("N2001A01BB03")["diagnosis_class"]
    ('N2001A01', 'ALS')
    """
    m = _NAME.match(Path(name).stem if name.endswith((".hea", ".bin")) else name)
    if not m:
        return {}
    return {"subject": m["set"] + m["group"] + m["subj"], "diagnosis_class": GROUP_CLASS[m["group"]],
            "muscle_code": m["muscle"], "record_index": int(m["rec"])}


def header_meta(comments) -> dict:
    """``#key: value`` header comments as a dict (keys lower-case, spaces as ``_``)."""
    meta = {}
    for c in comments:
        if ":" in c:
            k, v = c.split(":", 1)
            meta[k.strip().lower().replace(" ", "_")] = v.strip()
    return meta


def _diagnosis_class(diagnosis: str) -> str | None:
    d = diagnosis.lower()
    if "als" in d.split() or d.endswith("als"):
        return "ALS"
    if "control" in d or "healthy" in d or "healty" in d or "normal" in d:
        return "control"
    if any(w in d for w in ("myopathy", "myositis", "dystrophy")):
        return "myopathy"
    return None


def load_wfdb(path, *, fs: float | None = None, channel: int = 0):
    """Read one WFDB record as a single-channel :class:`bmiss.io.Recording` (µV).

    Parameters
    ----------
    path : the ``.hea`` header (or the record name without suffix); the signal file named in the
        header must lie next to it.
    fs : expected sampling rate (Hz); a header with another rate is refused.
    channel : which signal of a multi-signal record to read (0-based).

    Returns
    -------
    Recording with ``emg`` [1, n_samples] float32 µV and ``meta`` holding the header comments
    (``diagnosis``, ``muscle``, ``level``, ``age``, ...) plus ``subject``, ``diagnosis_class``
    (ALS / control / myopathy), ``record`` and ``source``.

    Examples
    --------
    >>> rec = load_wfdb("N2001A01BB01.hea")  # doctest: +SKIP
    >>> rec.meta["subject"], rec.meta["diagnosis_class"], rec.fs  # doctest: +SKIP
    ('N2001A01', 'ALS', 23437.5)
    """
    import wfdb as _wfdb

    from ..io import Recording

    path = Path(path)
    hea = path if path.suffix.lower() == ".hea" else path.with_suffix(".hea")
    if not hea.exists():
        raise FileNotFoundError(f"{hea}: no such file")
    base = str(hea.with_suffix(""))
    try:
        r = _wfdb.rdrecord(base, channels=[channel], physical=True)
    except FileNotFoundError as e:
        raise BmissFileError(f"{hea}: the signal file named in the header is missing ({e})") from None
    except Exception as e:  # noqa: BLE001 - wfdb raises plain ValueError/IndexError on bad headers
        raise BmissFileError(f"{hea}: not a readable WFDB record ({type(e).__name__}: {e})") from None
    x = np.asarray(r.p_signal[:, 0], np.float64)
    bad = ~np.isfinite(x)  # WFDB's invalid-sample code (-32768 in format 16) reads as NaN
    if bad.all():
        raise BmissFileError(f"{hea}: every sample is marked invalid")
    if bad.any():  # bridge them linearly so that filters do not spread NaN over the record
        good = np.flatnonzero(~bad)
        x[bad] = np.interp(np.flatnonzero(bad), good, x[good])
    unit = (r.units or ["uV"])[0] or "uV"
    scale = {"uv": 1.0, "mv": 1e3, "v": 1e6}.get(unit.lower().replace("µ", "u"))
    if scale is None:
        raise BmissFileError(f"{hea}: signal unit {unit!r} is not a voltage (uV, mV, V)")
    if fs is not None and abs(float(fs) - float(r.fs)) > 1e-6 * float(r.fs):
        raise BmissFileError(f"{hea}: the header says fs = {r.fs} Hz, not {fs} Hz")
    meta = header_meta(r.comments or [])
    meta.update(record=r.record_name, source=str(hea), n_signals=int(r.n_sig), unit="uV",
                signal_file=(r.file_name or [""])[0],
                n_invalid=int(bad.sum()))
    meta.update(parse_name(r.record_name))
    if "diagnosis_class" not in meta and "diagnosis" in meta:
        cls = _diagnosis_class(meta["diagnosis"])
        if cls:
            meta["diagnosis_class"] = cls
    meta.setdefault("subject", r.record_name)
    return Recording(emg=(x * scale)[None, :].astype(np.float32), fs=float(r.fs), meta=meta)
