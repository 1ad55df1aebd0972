"""One home for a recording's geometry: the anatomy whose electrode grid is the recording's.

Model-based methods (``bmiss``, the subject fit) invert an anatomy; this module gives them one
with the recording's layout (rows, columns, IED, missing electrodes, channel order, sampling rate).
It sits above :mod:`bmiss.anatomy`, :mod:`bmiss.electrodes` and :mod:`bmiss.io`, which import
nothing from here or from each other in a circle.
"""
from __future__ import annotations

import tomllib

from . import anatomy as anatomy_mod
from . import electrodes
from .errors import GeometryError

__all__ = ["anatomy_for_recording"]


def anatomy_for_recording(rec, anatomy=None, *, electrode=None, orientation=None, grid=None, ied=None,
                          missing=None):
    """The anatomy whose electrode grid is the recording's: what a model-based method inverts.

    rec: :class:`bmiss.io.Recording`.  anatomy: shipped name, TOML path or Anatomy (default: the
    nominal anatomy stored in a simulation's meta, else ``biceps_brachii`` for the tissue).
    electrode / orientation / grid / ied / missing: the CLI flags; they override the file's geometry.

    The grid's rows, columns, IED, missing electrodes and channel order become the layout's, so
    the forward model puts every channel at its real position; the sampling rate becomes the
    recording's and the MUAP window keeps its duration in ms.  A simulation without flags keeps
    its own anatomy's grid (montage included).  Raises :class:`GeometryError` naming the flags
    when no geometry is known (never falls back to a default grid), and when the layout's
    channel count differs from the recording's.
    """
    flags = any(v is not None for v in (electrode, orientation, grid, ied)) or bool(missing)
    if anatomy is not None:
        a = anatomy_mod.load(anatomy)
        base_is_sim = False
    elif rec.meta.get("anatomy_toml"):
        # a simulation's nominal anatomy; its tissue_overrides (a simulated mismatch) stay hidden
        a = anatomy_mod.from_dict(tomllib.loads(rec.meta["anatomy_toml"]), source="recording meta")
        base_is_sim = True
    else:
        a = anatomy_mod.load("biceps_brachii")
        base_is_sim = False
    lay = electrodes.resolve_layout(rec, electrode=electrode, orientation=orientation, grid=grid, ied=ied, missing=missing)
    if base_is_sim and not flags and a.grid.n_channels == rec.n_channels:
        pass  # the simulation's own grid, montage and channel order
    else:
        if lay is None:
            if rec.channel_map is not None and rec.ied_mm is None:
                raise GeometryError(f"the recording gives its channel positions ({rec.grid_shape[0]}x"
                                    f"{rec.grid_shape[1]} grid) but not the inter-electrode distance: add --ied MM "
                                    "(or --electrode CODE)")
            raise GeometryError(f"the recording ({rec.n_channels} channels) does not describe its electrode grid; a "
                                f"model-based method needs it: pass {electrodes._FLAGS}")
        if lay.n_channels != rec.n_channels:
            raise GeometryError(f"electrode layout {lay.code} ({lay.rows}x{lay.cols}) has {lay.n_channels} channels but "
                                f"the recording has {rec.n_channels}; pass the grid that recorded it: {electrodes._FLAGS}")
        try:
            a = a.with_layout(lay)
        except anatomy_mod.AnatomyError as e:
            fits = []
            for name in anatomy_mod.list_anatomies():
                try:
                    anatomy_mod.load(name).with_layout(lay)
                    fits.append(name)
                except anatomy_mod.AnatomyError:
                    pass
            hint = f"; shipped anatomies it fits: {', '.join(fits)}" if fits else ""
            raise GeometryError(f"electrode layout {lay.code} ({lay.rows}x{lay.cols} @ {lay.ied_mm:g} mm) does not fit "
                                f"anatomy {a.name!r} ({str(e).split(': ', 1)[-1]}); pass --anatomy NAME|PATH.toml "
                                f"for the recorded muscle{hint}") from None
    if abs(a.grid.fs_hz - rec.fs) > 1e-6:
        # keep the MUAP window's duration (ms) when the sampling rate changes
        T = int(round(a.grid.muap_samples * rec.fs / a.grid.fs_hz))
        a = a.with_grid(fs_hz=float(rec.fs), muap_samples=int(min(max(T, 16), 1024)))
    return a
