"""Ctrl-C and SIGTERM: the first one stops a run at the next safe point, and nothing is written after it.

Python runs a signal handler in the main thread, between two bytecodes, wherever that thread is;
a ``KeyboardInterrupt`` raised there can land in code that swallows it (JAX's garbage-collection
callback prints "Exception ignored ... KeyboardInterrupt" and the run goes on). So the handler
installed by :func:`install` does three things:

* sets a flag (:func:`requested`) that stays set: :func:`check` raises :class:`Interrupted` when it
  is, and :func:`bmiss.files.atomic_write` calls it before writing and again before renaming the
  finished temporary into place, so no output is written or replaced after an interrupt;
* raises :class:`Interrupted` (a ``KeyboardInterrupt``) to unwind at once;
* starts a watchdog thread that raises it again in the main thread every ``RETRY_S`` until the
  command line has caught it (:func:`acknowledge`), and, for the console command, prints the
  one line and leaves with exit status 130 if the main thread has not unwound within ``GRACE_S``
  (e.g. stuck in a long XLA call): outputs are atomic, so nothing is left half-written.

This module imports nothing heavy (the command line installs it before JAX is imported).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

EXIT_STATUS = 130
RETRY_S = 0.25
GRACE_S = 3.0

_requested = threading.Event()
_acknowledged = threading.Event()
_state: dict = {"prev": {}, "console": False, "in_main": False, "line": "bmiss: interrupted; nothing was written",
                "hook": None, "watchdog": None}


class Interrupted(KeyboardInterrupt):
    """Raised by :func:`check` (and the handler) once Ctrl-C or SIGTERM was received."""


def requested() -> bool:
    """True once Ctrl-C / SIGTERM was received since :func:`install`."""
    return _requested.is_set()


def check() -> None:
    """Raise :class:`Interrupted` if an interrupt was received: call before any output is written
    and at stage boundaries (the flag survives a ``KeyboardInterrupt`` that was swallowed)."""
    if _requested.is_set():
        raise Interrupted()


def set_line(line: str) -> None:
    """The one line printed when the console command leaves on an interrupt."""
    _state["line"] = line


def line() -> str:
    return _state["line"]


def enter_main() -> None:
    """The command line's ``main`` runs (and catches :class:`Interrupted`) from here on."""
    _state["in_main"] = True
    if _requested.is_set():
        raise Interrupted()


def acknowledge() -> None:
    """The command line has caught the interrupt: stop raising it again."""
    _acknowledged.set()


def _already_unwinding() -> bool:
    exc = sys.exc_info()[1]  # the exception being handled (or propagating through a finally) here
    return isinstance(exc, KeyboardInterrupt)


def _handler(signum, frame):
    first = not _requested.is_set()
    _requested.set()
    if first:
        t = threading.Thread(target=_watchdog, name="bmiss-interrupt", daemon=True)
        _state["watchdog"] = t
        t.start()
    if _state["console"] and not _state["in_main"]:
        _hard_exit()  # still importing the command line: nothing to unwind, nothing written
    if _acknowledged.is_set() or _already_unwinding():
        return  # never raise inside the cleanup of the first interrupt
    if _importing(frame):  # unwinding a half-initialised extension module (jaxlib) can crash the process:
        if _state["console"]:  # the command leaves at once (no output is written while importing)
            _hard_exit()
        return  # in process: the flag stops the run at the next check
    raise Interrupted()


def _importing(frame) -> bool:
    """Whether ``frame`` runs inside an import (importlib's bootstrap frames are on the stack)."""
    f = frame
    while f is not None:
        if f.f_code.co_filename.startswith("<frozen importlib"):
            return True
        f = f.f_back
    return False


def _hard_exit() -> None:
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    try:
        sys.stderr.write(_state["line"] + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    os._exit(EXIT_STATUS)


def _watchdog() -> None:
    import _thread

    t0 = time.monotonic()
    while not _acknowledged.wait(RETRY_S):
        if _state["console"] and time.monotonic() - t0 > GRACE_S:
            _hard_exit()
        sigs = list(_state["prev"])
        if not sigs:  # uninstalled meanwhile
            return
        _thread.interrupt_main(sigs[0])  # runs the handler again in the main thread


def _unraisable(args) -> None:
    """Drop the "Exception ignored ... KeyboardInterrupt" report of an interrupt that landed in a
    callback (the flag carries it); report everything else as usual."""
    if _requested.is_set() and isinstance(args.exc_value, KeyboardInterrupt):
        return
    (_state["hook"] or sys.__unraisablehook__)(args)


def install(*, console: bool = False) -> None:
    """Install the SIGINT/SIGTERM handler (main thread only; a no-op elsewhere) and clear the flag.

    console: the process is the ``bmiss`` command, which may leave with :func:`os._exit` (130)
    when the main thread does not unwind within ``GRACE_S``."""
    if threading.current_thread() is not threading.main_thread():
        return
    _requested.clear()
    _acknowledged.clear()
    _state["console"] = console
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sig in _state["prev"]:
            continue
        if signal.getsignal(sig) == signal.SIG_IGN:
            continue  # ignored by whoever started us (e.g. a background job of a script): keep it so
        _state["prev"][sig] = signal.signal(sig, _handler)
    if sys.unraisablehook is not _unraisable:
        _state["hook"] = sys.unraisablehook
        sys.unraisablehook = _unraisable


def uninstall() -> None:
    """Restore the previous handlers (after an in-process :func:`bmiss.cli.main`)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _acknowledged.set()  # stops a watchdog
    _state["in_main"] = False
    for sig, prev in _state["prev"].items():
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
    _state["prev"] = {}
    if sys.unraisablehook is _unraisable:
        sys.unraisablehook = _state["hook"] or sys.__unraisablehook__
    _requested.clear()


def installed() -> bool:
    return bool(_state["prev"])


def command(*args: str) -> list[str]:
    """argv that runs ``bmiss ARGS`` in a child Python with SIGINT at its default, so that it reacts to
    Ctrl-C even when this process ignores it (a background job); for tests and the hostile-input trial."""
    code = ("import signal, sys, runpy; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv = ['bmiss'] + sys.argv[1:]; runpy.run_module('bmiss', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]


__all__ = ["Interrupted", "requested", "check", "install", "uninstall", "acknowledge", "set_line", "EXIT_STATUS"]
