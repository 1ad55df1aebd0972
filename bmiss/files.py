"""One home for writing files: atomic writes, one JSON policy, run provenance.

* :func:`atomic_write` calls a writer on a temporary in the output's folder and renames it into
  place, so a crash or Ctrl-C never leaves half a file.
* :func:`write_text` / :func:`write_json` are the text and JSON writers every module uses.
* JSON policy (:func:`jsonable`): numpy scalars and arrays become plain numbers and lists;
  non-finite floats become ``null`` (strict JSON, readable by every parser); anything else
  unknown is written as its ``str`` (an odd meta field never costs a finished result its file).
* :func:`provenance`: command, git commit, machine and load, for every results JSON.

This module imports nothing from bmiss but :mod:`bmiss.errors` and :mod:`bmiss.interrupts`.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

try:
    from .interrupts import check as _check_interrupt  # light: signal and threading only
except ImportError:  # this file loaded on its own (no package), as a killed-writer test does
    def _check_interrupt() -> None:
        return None

_TMP_MAX_AGE_S = 3600.0  # a foreign, stale temporary older than this is removed


def _tmp_prefix(path: Path) -> str:
    return "." + path.name + "."


def _clean_stale_tmps(path: Path) -> None:
    """Remove temporaries of ``path`` left by a killed writer (SIGKILL, power loss).

    A temporary is ``.NAME.PID.XXXX.SUFFIX.tmp``; it is stale when its process is gone, or,
    when that cannot be told, when it is older than an hour."""
    try:
        entries = list(path.parent.glob(_tmp_prefix(path) + "*.tmp"))
    except OSError:
        return
    now = time.time()
    for t in entries:
        pid_s = t.name[len(_tmp_prefix(path)):].split(".", 1)[0]
        alive = None
        if pid_s.isdigit():
            pid = int(pid_s)
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except (PermissionError, OSError):
                alive = None
        try:
            old = now - t.stat().st_mtime > _TMP_MAX_AGE_S
            if alive is False or (alive is None and old):
                t.unlink()
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, writer: Callable[[str], Any], *, force: bool = True) -> Path:
    """Call ``writer(tmp_path)`` then rename onto ``path``: a crash never leaves half a file.

    ``writer`` receives a temporary path ``.NAME.PID.XXXX.SUFFIX.tmp`` in the same directory.
    With ``force=False`` an existing ``path`` raises ``FileExistsError``; a directory at
    ``path`` is always refused.  On any exception (Ctrl-C included) the temporary is removed.
    A process killed outright (SIGKILL, power loss) cannot clean up: its temporary is removed by
    the next write of the same output (once that process is gone).

    Examples
    --------
    >>> atomic_write("out.bin", lambda tmp: open(tmp, "wb").write(b"..."))  # doctest: +SKIP
    """
    _check_interrupt()  # nothing is written after Ctrl-C / SIGTERM (bmiss.interrupts)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name for the output")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force (force=True) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_tmp_prefix(path)}{os.getpid()}.",
                               suffix=path.suffix + ".tmp")
    os.close(fd)
    try:
        writer(tmp)
        _check_interrupt()  # an interrupt while writing (even one a callback swallowed) keeps the old file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str, *, force: bool = True) -> Path:
    """Write ``text`` (UTF-8) atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), force=force)


def jsonable(o: Any) -> Any:
    """Plain JSON types under bmiss's one policy: non-finite floats -> ``None``; numpy -> Python;
    tuples -> lists; unknown objects -> ``str``."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    if o is None or isinstance(o, str):
        return o
    if isinstance(o, Path):
        return str(o)
    return str(o)


def dumps_json(obj: Any, *, indent: int | None = 1) -> str:
    """``obj`` as strict JSON text under :func:`jsonable`'s policy."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, *, force: bool = True, indent: int | None = 1) -> Path:
    """Write ``obj`` as strict JSON (NaN/inf -> null) atomically.

    Examples
    --------
    >>> write_json("report.json", {"sil": np.float32(0.93), "pnr": float("nan")})  # doctest: +SKIP
    """
    return write_text(path, dumps_json(obj, indent=indent) + "\n", force=force)


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """HEAD commit of the checkout holding bmiss (or ``cwd``), ``''`` when not a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=cwd or Path(__file__).resolve().parent).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance is best effort
        return ""


def provenance(**settings: Any) -> dict:
    """Command, git commit, machine (CPU/GPU, CPU count, load) and time of this process, plus any
    ``settings`` given: what every results JSON records."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    out = {"command": " ".join(sys.argv), "commit": git_commit(), "machine": platform.node(),
           "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "load_avg": load, "python": platform.python_version(),
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    jax = sys.modules.get("jax")
    if jax is not None:  # never import jax just to describe the run
        out["jax"] = jax.__version__
        out["backend"] = jax.default_backend()
        out["devices"] = [str(d) for d in jax.devices()]
    if settings:
        out["settings"] = settings
    return out


__all__ = ["atomic_write", "write_text", "write_json", "dumps_json", "jsonable", "provenance", "git_commit"]
