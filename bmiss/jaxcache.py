"""JAX's persistent compilation cache for the ``bmiss`` command (no JAX import here).

A fresh ``bmiss decompose`` process compiles every kernel of the pipeline again (most of a first
run's extra time); with the cache on, the second process of the same shapes loads them from disk.
The command turns it on before JAX is imported, by JAX's own environment variables; library use
(``import bmiss``) is left as the user configured JAX.

``BMISS_JAX_CACHE``: a folder, or ``off`` / ``0`` / ``no`` to turn it off. Default:
``$XDG_CACHE_HOME/bmiss/jax`` (``~/.cache/bmiss/jax``). An explicit ``JAX_COMPILATION_CACHE_DIR``
wins. Entries are keyed by the compiled program, JAX version and device: a new bmiss version
never reads a stale kernel; delete the folder to reclaim its space.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "enable_for_command"]

OFF = ("off", "0", "no", "false", "none")


def cache_dir(env=None) -> Path | None:
    """The folder the command's cache uses (``None``: off)."""
    env = os.environ if env is None else env
    v = env.get("BMISS_JAX_CACHE", "").strip()
    if v.lower() in OFF:
        return None
    if v:
        return Path(v).expanduser()
    root = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "bmiss" / "jax"


def enable_for_command(env=None) -> Path | None:
    """Point JAX's persistent cache at :func:`cache_dir` (unless JAX_COMPILATION_CACHE_DIR is set);
    call before JAX is imported. Returns the folder in use or ``None``."""
    env = os.environ if env is None else env
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(env["JAX_COMPILATION_CACHE_DIR"])
    d = cache_dir(env)
    if d is None:
        return None
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    env["JAX_COMPILATION_CACHE_DIR"] = str(d)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    return d
