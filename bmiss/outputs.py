"""The output rules every writer keeps, on the command line and in the Python API.

* :func:`check_outputs`: refused before any work starts: an existing file without ``force``; a
  folder given as a file; an output that is also an input (even with ``force``); two outputs with
  one name; an output whose folder cannot be created or written.
* :func:`check_suffix`: an output whose name would make a file bmiss cannot read back (``simulate
  --out a37``, ``--out a38.txt``, ``decompose --out newdir/``) is refused before any work.

This module imports nothing heavy (the command line calls it before JAX is imported).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from .errors import UserError

# What bmiss reads back: recordings by suffix (bmiss.io.READERS / WRITERS), decompositions as .npz.
RECORDING_SUFFIXES = (".npz", ".json", ".json.gz")
DECOMPOSITION_SUFFIXES = (".npz",)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (existing: same inode; otherwise the same resolved path)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_outputs(paths: Iterable, force: bool, inputs: Iterable = (), *, force_hint: str = "--force") -> list[Path]:
    """Refuse, before any work starts, outputs that cannot or must not be written.

    Refused: an existing file without ``force``; a folder given as a file (even with ``force``);
    an output that is also an input (``--json v.npz --truth v.npz``; even with ``force``); two
    outputs with one name; an output whose folder cannot be created or written.
    force_hint: how the message names the overwrite switch (``--force`` or ``force=True``).

    Examples
    --------
    >>> check_outputs(["units.csv"], force=False, inputs=["dec.npz"])  # doctest: +SKIP
    [PosixPath('units.csv')]
    """
    ins = [Path(q) for q in inputs if q is not None]
    seen: list[Path] = []
    outs = [Path(p) for p in paths]
    for p in outs:
        if p.is_dir():
            raise IsADirectoryError(f"output {p} is a folder; give the path of a file (in it or elsewhere)")
        for q in ins:
            if same_file(p, q):
                raise UserError(f"output {p} is also an input ({q}); write the output to another file")
        for q in seen:
            if same_file(p, q):
                raise UserError(f"two outputs would be written to {p}; choose another name")
        seen.append(p)
        if p.exists() and not force:
            raise FileExistsError(f"{p} exists; pass {force_hint} to overwrite it, or choose another output")
        anc = p.absolute().parent
        while not anc.exists():
            anc = anc.parent
        if not anc.is_dir():
            raise NotADirectoryError(f"cannot write {p}: {anc} is a file, not a folder")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write {p}: folder {anc} is not writable; choose another output")
    return outs


def check_suffix(path, allowed: Sequence[str], *, what: str, arg: str = "--out", example: str = "") -> Path:
    """Refuse an output name that bmiss could not read back: no suffix, another suffix, or a name
    ending in a slash (a folder). ``allowed``: lower-case suffixes, e.g. ``(".npz",)``."""
    raw = os.fspath(path)
    ok = ", ".join(allowed)
    eg = f" (e.g. {example})" if example else ""
    if not raw.strip():
        raise UserError(f"{arg} is empty: give the {what} file to write, ending in {ok}{eg}")
    if raw.endswith(("/", os.sep)) or (os.altsep and raw.endswith(os.altsep)) or Path(raw).is_dir():
        raise IsADirectoryError(f"{arg} {raw} is a folder; give the path of the {what} file to write, ending in "
                                f"{ok}{eg}")
    name = Path(raw).name.lower()
    if not name.endswith(tuple(allowed)) or name in allowed:
        suf = f"not {Path(raw).suffix}" if Path(raw).suffix else "and the name has no suffix"
        raise UserError(f"{arg} {raw}: a {what} is written as {ok}, {suf}; bmiss reads files back by their "
                        f"suffix{eg}")
    return Path(raw)


__all__ = ["check_outputs", "check_suffix", "same_file", "RECORDING_SUFFIXES", "DECOMPOSITION_SUFFIXES"]
