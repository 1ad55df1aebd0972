"""Figures: MUAP maps, spike rasters, EMG stretches, decomposition vs truth, yield vs SNR.

Every function builds a :class:`matplotlib.figure.Figure` on the Agg canvas directly (pyplot is
never imported, so no global backend is switched, no window opens and nothing is registered
with pyplot that could leak) and returns it.  With ``path`` the figure is written atomically
with :func:`bmiss.io.atomic_write` (a failure while saving leaves no partial file); the format
comes from the suffix (``.png``, ``.pdf``, ``.svg``, ...).

Conventions: EMG and MUAPs in µV, ``fs`` in Hz, spikes as sample indices, ``channel_map``
[n_channels, 2] holds the (row, col) of each channel on a ``grid_shape`` = (rows, cols) grid;
row 0 is drawn at the top.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .drive import smoothed_rate  # one definition of the rate smoothing (re-exported)
from .io import atomic_write
from .metrics import match_flags

__all__ = [
    "muap_map",
    "raster",
    "emg_stretch",
    "decomposition_vs_truth",
    "snr_yield",
    "simulation_overview",
    "smoothed_rate",
    "drive_rates",
]

DPI = 150
# qualitative colours without red (red marks errors) and grey
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
_ERR = "#d62728"


# ---------------------------------------------------------------- helpers
def _new_figure(figsize, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path, dpi: int = DPI) -> Figure:
    """Save ``fig`` atomically to ``path`` (format from the suffix), then release it."""
    if path is None:
        return fig
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"{path}: cannot tell the image format from the suffix {path.suffix!r}; "
                         f"use one of {', '.join('.' + k for k in sorted(supported))}")
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    finally:
        _close(fig)
    return fig


def _close(fig: Figure) -> None:
    """Close ``fig`` in pyplot if pyplot happens to manage it (ours never are)."""
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)


def _nice(x: float) -> float:
    """Largest 1/2/5 x 10^k not above ``x`` (x > 0)."""
    if not np.isfinite(x) or x <= 0:
        return 1.0
    e = math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * 10.0 ** e <= x * (1 + 1e-9):
            return m * 10.0 ** e
    return 10.0 ** e


def _fmt_num(v: float) -> str:
    return f"{v:g}"


def _grid_layout(n_ch: int, channel_map, grid_shape) -> tuple[np.ndarray, tuple[int, int]]:
    """(channel_map [n_ch, 2], (rows, cols)) with sensible defaults."""
    if channel_map is not None:
        cm = np.asarray(channel_map, np.int64).reshape(-1, 2)
        if len(cm) != n_ch:
            raise ValueError(f"channel_map has {len(cm)} rows but there are {n_ch} channels")
        if grid_shape is None:
            grid_shape = (int(cm[:, 0].max()) + 1, int(cm[:, 1].max()) + 1)
    else:
        if grid_shape is None:
            cols = int(math.ceil(math.sqrt(n_ch)))
            grid_shape = (int(math.ceil(n_ch / cols)), cols)
        r, c = int(grid_shape[0]), int(grid_shape[1])
        if r * c < n_ch:
            raise ValueError(f"grid_shape {r}x{c} has fewer cells than the {n_ch} channels")
        cm = np.stack(np.unravel_index(np.arange(n_ch), (r, c)), 1)
    R, C = int(grid_shape[0]), int(grid_shape[1])
    if (cm < 0).any() or (cm[:, 0] >= R).any() or (cm[:, 1] >= C).any():
        raise ValueError(f"channel_map has positions outside the {R}x{C} grid")
    return cm, (R, C)


def _spikes_list(spikes) -> list[np.ndarray]:
    return [np.unique(np.asarray(s if s is not None else [], np.int64).ravel()) for s in spikes]


def _events(ax, rows: Sequence[np.ndarray], offsets: Sequence[float], fs: float, *, colors,
            height: float = 0.8, lw: float = 0.8, zorder: float = 2) -> None:
    """Vertical ticks at spike times (s) for each row, drawn as one LineCollection."""
    segs, cols = [], []
    for sp, y, c in zip(rows, offsets, colors):
        t = np.asarray(sp, np.float64) / fs
        if len(t) == 0:
            continue
        seg = np.empty((len(t), 2, 2))
        seg[:, :, 0] = t[:, None]
        seg[:, 0, 1] = y - height / 2
        seg[:, 1, 1] = y + height / 2
        segs.append(seg)
        cols += [c] * len(t)
    if segs:
        ax.add_collection(LineCollection(np.concatenate(segs), colors=cols, linewidths=lw, zorder=zorder))


# ---------------------------------------------------------------- MUAP map
def _draw_muap_grid(ax, muap: np.ndarray, cm: np.ndarray, shape: tuple[int, int], fs: float, *,
                    uv_per_cell: float, color="k", title: str | None = None, lw: float = 0.8) -> None:
    """One unit's MUAP [n_ch, T]: each channel's waveform in its (row, col) cell."""
    R, C = shape
    n_ch, T = muap.shape
    x0, xw = 0.08, 0.84  # trace spans 84% of the cell width
    tx = x0 + xw * np.arange(T) / max(T - 1, 1)
    present = np.zeros((R, C), bool)
    present[cm[:, 0], cm[:, 1]] = True
    # faint electrode cells; missing electrodes get a grey cross
    for r in range(R):
        for c in range(C):
            yb = R - 1 - r
            if present[r, c]:
                ax.add_patch(_rect(c + 0.03, yb + 0.03, 0.94, 0.94, fc="#f4f4f4", ec="none", zorder=0))
            else:
                ax.plot([c + 0.5], [yb + 0.5], marker="x", ms=6, color="#b0b0b0", zorder=1)
    segs = np.empty((n_ch, T, 2))
    segs[:, :, 0] = cm[:, 1, None] + tx[None, :]
    segs[:, :, 1] = (R - 1 - cm[:, 0, None]) + 0.5 + muap / uv_per_cell
    ax.add_collection(LineCollection(segs, colors=color, linewidths=lw, zorder=2))

    # scale bars below the grid: µV (vertical) and ms (horizontal)
    ptp_max = float(np.ptp(muap, axis=1).max()) if muap.size else 0.0
    uv_bar = _nice(max(ptp_max, uv_per_cell * 0.2) * 0.5)
    dur_ms = (T - 1) / fs * 1000.0
    ms_bar = _nice(dur_ms * 0.45)
    bx, by = 0.1, -0.35
    h = uv_bar / uv_per_cell
    w = xw * ms_bar / dur_ms if dur_ms > 0 else 0.5
    ax.plot([bx, bx, bx + w], [by + h, by, by], color="k", lw=1.4, solid_capstyle="butt", zorder=3)
    ax.text(bx + w + 0.08, by, f"{_fmt_num(ms_bar)} ms", va="center", ha="left", fontsize=7)
    ax.text(bx - 0.06, by + h / 2, f"{_fmt_num(uv_bar)} µV", va="center", ha="right", fontsize=7,
            rotation=90)
    ax.set_xlim(-0.25, C + 0.05)
    y_hi = float(segs[:, :, 1].max()) if segs.size else R
    y_lo = float(segs[:, :, 1].min()) if segs.size else 0.0
    ax.set_ylim(min(by - 0.3, y_lo - 0.05), max(R + 0.05, by + h + 0.1, y_hi + 0.05))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def _rect(x, y, w, h, **kw):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, **kw)


def _largest_units(muaps: np.ndarray, k: int, candidates=None) -> list[int]:
    ptp = np.ptp(muaps, axis=2).max(axis=1)
    idx = np.arange(len(ptp)) if candidates is None else np.asarray(list(candidates), np.int64)
    order = idx[np.argsort(-ptp[idx], kind="stable")]
    return [int(i) for i in order[:k]]


def _uv_per_cell(muaps_sel: np.ndarray) -> float:
    """µV per grid cell so that the largest channel's peak-to-peak spans 1.4 cells."""
    ptp = float(np.ptp(muaps_sel, axis=-1).max()) if muaps_sel.size else 0.0
    return ptp / 1.4 if ptp > 0 else 1.0


def muap_map(muaps, channel_map, grid_shape, fs: float, units: Sequence[int] | None = None, path=None,
             title: str | None = None, *, same_scale: bool = True, max_units: int = 4) -> Figure:
    """MUAPs laid out over the electrode grid, one panel per unit.

    muaps: [n_units, n_ch, T] µV.  channel_map: [n_ch, 2] (row, col) or None (row-major over
    ``grid_shape``).  units: indices to show (default: the ``max_units`` largest by
    peak-to-peak).  Within a panel all channels share one amplitude scale; with
    ``same_scale`` (default) all panels share it too, so sizes compare across units.  Scale
    bars give µV and ms; a grey cross marks a grid position without an electrode.
    """
    M = np.asarray(muaps, np.float64)
    if M.ndim == 2:
        M = M[None]
    if M.ndim != 3:
        raise ValueError(f"muaps must be [n_units, n_channels, T], got shape {M.shape}")
    cm, shape = _grid_layout(M.shape[1], channel_map, grid_shape)
    if units is None:
        units = _largest_units(M, max_units)
    units = [int(u) for u in np.atleast_1d(units)]
    for u in units:
        if not -len(M) <= u < len(M):
            raise ValueError(f"unit {u} out of range: there are {len(M)} MUAPs")
    n = max(len(units), 1)
    R, C = shape
    panel_w = max(1.6, 0.42 * C + 0.5)
    panel_h = max(2.5, 0.36 * R + 0.9)
    fig = _new_figure((min(panel_w * n, 16), panel_h + (0.35 if title else 0)))
    axes = fig.subplots(1, n, squeeze=False)[0]
    common = _uv_per_cell(M[units]) if (same_scale and units) else None
    for ax, u in zip(axes, units):
        upc = common if common is not None else _uv_per_cell(M[u])
        _draw_muap_grid(ax, M[u], cm, shape, fs, uv_per_cell=upc, color="#1f4e8c",
                        title=f"MU {u}  ({np.ptp(M[u], axis=1).max():.0f} µV p-p)")
    if not units:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "no units", ha="center", va="center", transform=axes[0].transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


# ---------------------------------------------------------------- raster
def _draw_raster(ax, spikes, fs: float, n_samples: int | None, excitation=None, *,
                 colors=None, highlight: tuple[float, float] | None = None):
    sp = _spikes_list(spikes)
    n = len(sp)
    if n_samples is None:
        n_samples = len(excitation) if excitation is not None else \
            int(max((s.max() + 1 for s in sp if len(s)), default=int(fs)))
    dur = n_samples / fs
    if colors is None:
        colors = [_COLOURS[i % len(_COLOURS)] for i in range(n)]
    axx = None
    if excitation is not None:
        e = np.asarray(excitation, np.float64).ravel()
        axx = ax.twinx()
        t = np.arange(len(e)) / fs
        axx.fill_between(t, 0, e, color="0.85", lw=0, zorder=0)
        axx.plot(t, e, color="0.45", lw=1.0, zorder=1)
        top = max(1.0, float(np.nanmax(e)) if len(e) else 1.0)
        axx.set_ylim(0, top * 1.05)
        axx.set_ylabel("excitation", color="0.35")
        axx.tick_params(axis="y", colors="0.35")
        # raster drawn above the excitation
        ax.set_zorder(axx.get_zorder() + 1)
        ax.patch.set_visible(False)
    if highlight is not None:
        ax.axvspan(*highlight, color="#ffe9a8", alpha=0.6, lw=0, zorder=0)
    _events(ax, sp, np.arange(n), fs, colors=colors, height=0.75, lw=0.9)
    ax.set_xlim(0, dur)
    ax.set_ylim(-0.7, max(n, 1) - 0.3)
    step = max(1, int(math.ceil(n / 20)))
    ax.set_yticks(np.arange(0, n, step))
    ax.set_ylabel("motor unit")
    ax.set_xlabel("time (s)")
    return axx, n_samples


def raster(spikes, fs: float, excitation=None, path=None, title: str | None = None,
           n_samples: int | None = None, *, rates: bool = False, rate_window_s: float = 0.4) -> Figure:
    """Spike raster, one row per unit (unit 0 at the bottom), excitation on a twin axis.

    With ``rates=True`` a second panel below shows each unit's smoothed discharge rate
    (Hann window of ``rate_window_s``, see :func:`smoothed_rate`) in the unit's colour.
    n_samples: length of the time axis (default: the excitation's, else the last spike).
    """
    sp = _spikes_list(spikes)
    n = len(sp)
    h = min(1.6 + 0.16 * max(n, 4), 9.0)
    fig = _new_figure((10, h + (2.6 if rates else 0)))
    if rates:
        ax, axr = fig.subplots(2, 1, sharex=True, height_ratios=[h, 2.6])
    else:
        ax, axr = fig.subplots(1, 1), None
    colors = [_COLOURS[i % len(_COLOURS)] for i in range(n)]
    _, n_samples = _draw_raster(ax, sp, fs, n_samples, excitation, colors=colors)
    if axr is not None:
        ax.set_xlabel("")
        step = max(1, int(fs * rate_window_s / 40))  # smooth curves: ~40 points per window
        t = np.arange(0, n_samples, step) / fs
        for s, c in zip(sp, colors):
            r = smoothed_rate(s, fs, n_samples, window_s=rate_window_s)[::step]
            if np.isfinite(r).any():
                axr.plot(t, r, color=c, lw=1.0)
        axr.set_ylabel("discharge rate (Hz)")
        axr.set_xlabel("time (s)")
        axr.set_ylim(bottom=0)
        axr.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


def reference_comparison(dec_spikes, ref_spikes, fs: float, report: Mapping, path=None, *,
                         n_samples: int | None = None, title: str | None = None) -> Figure:
    """A reference decomposition and a decomposition side by side, one row per unit: matched
    pairs (``report["pairs"]`` from :func:`bmiss.reference.compare`) share a row and a colour
    and carry their RoA; units found by one side only are grey, below the pairs.

    Examples
    --------
    >>> rep = bmiss.reference.compare(dec, ref)                                        # doctest: +SKIP
    >>> reference_comparison(dec.spikes, ref.spikes, ref.fs, rep, "vs_reference.png")  # doctest: +SKIP
    """
    dec_sp, ref_sp = _spikes_list(dec_spikes), _spikes_list(ref_spikes)
    pairs = list(report.get("pairs", []))
    empty = np.zeros(0, np.int64)
    left, right, colors, labels = [], [], [], []
    for k, p in enumerate(pairs):
        left.append(ref_sp[p["ref"]])
        right.append(dec_sp[p["dec"]])
        colors.append(_COLOURS[k % len(_COLOURS)])
        labels.append(f"{p['dec']}  RoA {p['roa']:.2f}")
    for i in report.get("only_reference", []):
        left.append(ref_sp[i])
        right.append(empty)
        colors.append("0.55")
        labels.append("-")
    for j in report.get("only_decomposition", []):
        left.append(empty)
        right.append(dec_sp[j])
        colors.append("0.55")
        labels.append(f"{j}  (only here)")
    n = len(left)
    if n_samples is None:
        n_samples = int(max((s.max() + 1 for s in left + right if len(s)), default=int(fs)))
    fig = _new_figure((12, min(1.8 + 0.2 * max(n, 4), 10.0)))
    axl, axr = fig.subplots(1, 2, sharex=True, sharey=True)
    _draw_raster(axl, left, fs, n_samples, colors=colors)
    _draw_raster(axr, right, fs, n_samples, colors=colors)
    ref = report.get("reference", {})
    axl.set_title(f"reference: {ref.get('origin', '')} ({ref.get('n_units', len(ref_sp))} units)", fontsize=10)
    axr.set_title(f"decomposition: {report.get('decomposition', {}).get('method', '')} ({len(dec_sp)} units); "
                  f"RoA >= 0.9: {report.get('common_90', 0)}", fontsize=10)
    axl.set_yticks(np.arange(n))
    axl.set_yticklabels([str(p["ref"]) for p in pairs] + [str(i) for i in report.get("only_reference", [])]
                        + ["-"] * len(report.get("only_decomposition", [])), fontsize=7)
    axr.yaxis.set_tick_params(labelleft=False, labelright=True)
    axr.set_yticks(np.arange(n))
    axr.set_yticklabels(labels, fontsize=7)
    axr.set_ylabel("")
    if title:
        fig.suptitle(title, fontsize=11)
    return _finish(fig, path)


# ---------------------------------------------------------------- EMG stretch
def _draw_emg(ax, emg: np.ndarray, fs: float, start_s: float, length_s: float, channels, labels=None):
    X = np.asarray(emg)
    n_ch, N = X.shape
    i0 = int(round(start_s * fs))
    if not 0 <= i0 < N:
        raise ValueError(f"start_s={start_s} s is outside the recording (0 .. {N / fs:.3f} s)")
    i1 = min(N, i0 + max(1, int(round(length_s * fs))))
    chans = np.asarray(channels, np.int64)
    seg = np.asarray(X[chans, i0:i1], np.float64)
    seg = seg - np.median(seg, axis=1, keepdims=True)
    amp = np.percentile(np.abs(seg), 99.5, axis=1) if seg.size else np.zeros(len(chans))
    spacing = float(np.median(amp)) * 2.2 if len(amp) else 1.0
    if not spacing > 0:
        spacing = float(np.abs(seg).max()) * 2.2 if seg.size and np.abs(seg).max() > 0 else 1.0
    t = (i0 + np.arange(i1 - i0)) / fs
    k = len(chans)
    offs = (k - 1 - np.arange(k)) * spacing  # first channel on top
    lines = np.empty((k, len(t), 2))
    lines[:, :, 0] = t[None, :]
    lines[:, :, 1] = seg + offs[:, None]
    ax.add_collection(LineCollection(lines, colors="k", linewidths=0.5))
    ax.set_xlim(t[0], t[-1] + 1 / fs)
    ax.set_ylim(-spacing, (k - 1) * spacing + spacing)
    step = max(1, int(math.ceil(k / 16)))
    ax.set_yticks(offs[::step])
    ax.set_yticklabels([labels[i] if labels is not None else f"ch {c}" for i, c in enumerate(chans)][::step],
                       fontsize=7)
    ax.set_xlabel("time (s)")
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    ax.tick_params(axis="y", length=0)
    # µV scale bar at the right edge
    bar = _nice(spacing)
    xb = t[-1] + (t[-1] - t[0]) * 0.012 + 1 / fs
    ax.plot([xb, xb], [offs[-1] - spacing * 0.5, offs[-1] - spacing * 0.5 + bar], color="k", lw=2,
            clip_on=False, solid_capstyle="butt")
    ax.text(xb + (t[-1] - t[0]) * 0.008, offs[-1] - spacing * 0.5 + bar / 2, f"{_fmt_num(bar)} µV",
            va="center", ha="left", fontsize=7, clip_on=False)


def _default_channels(n_ch: int, k: int = 16) -> np.ndarray:
    if n_ch <= k:
        return np.arange(n_ch)
    return np.unique(np.round(np.linspace(0, n_ch - 1, k)).astype(np.int64))


def emg_stretch(emg, fs: float, start_s: float = 0, length_s: float = 1.0, channels: Sequence[int] | None = None,
                path=None, *, title: str | None = None, channel_labels: Sequence[str] | None = None) -> Figure:
    """A stretch of EMG [n_ch, n_samples] (µV), channels stacked with offsets, µV scale bar.

    channels: indices to draw, top to bottom (default: all when <= 16, else 16 evenly spaced).
    """
    X = np.asarray(emg)
    if X.ndim != 2:
        raise ValueError(f"emg must be [n_channels, n_samples], got shape {X.shape}")
    chans = _default_channels(X.shape[0]) if channels is None else np.atleast_1d(np.asarray(channels, np.int64))
    if len(chans) == 0 or chans.min() < -X.shape[0] or chans.max() >= X.shape[0]:
        raise ValueError(f"channels must be indices into the {X.shape[0]} EMG channels")
    k = len(chans)
    fig = _new_figure((10, min(1.4 + 0.28 * k, 12)))
    ax = fig.subplots(1, 1)
    _draw_emg(ax, X, fs, start_s, length_s, chans, labels=channel_labels)
    if title is None and channels is None and k < X.shape[0]:
        title = f"{k} of {X.shape[0]} channels"
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


# ---------------------------------------------------------------- decomposition vs truth
def decomposition_vs_truth(dec, rec, report: Mapping | None = None, path=None, *, title: str | None = None,
                           max_pairs: int | None = None) -> Figure:
    """Matched units: true discharges (black) above the estimate (colour), labelled with RoA.

    ``report`` is :func:`bmiss.metrics.evaluate`'s output (computed when not given).  Each
    estimate is drawn shifted by its matching lag; spikes that found no partner within the
    matching tolerance are red (missed true discharges in the black row, false discharges
    in the coloured row).
    """
    if report is None:
        from .metrics import evaluate

        report = evaluate(dec, rec)
    fs = float(rec.fs)
    summ = report.get("summary", {})
    kind = "RoA" if summ.get("kind", "roa") == "roa" else "Dice"
    tol = int(summ.get("tol") or 1)
    pairs = [p for p in report["per_true"] if p.get("est", -1) is not None and p.get("est", -1) >= 0]
    pairs.sort(key=lambda p: p["true"])
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    true_sp = _spikes_list(rec.true_spikes)
    est_sp = _spikes_list(dec.spikes)
    n = len(pairs)
    fig = _new_figure((11, min(1.9 + 0.5 * max(n, 2), 24)))
    ax = fig.subplots(1, 1)
    rows, offs, cols, labels, ticks = [], [], [], [], []
    for k, p in enumerate(pairs):
        i, j, lag = int(p["true"]), int(p["est"]), int(p.get("lag", 0) or 0)
        t, e = true_sp[i], est_sp[j] + lag
        em, tm = match_flags(e, t, tol)
        y_true = 2 * (n - 1 - k) + 0.95  # first pair on top; pair rows close, pairs separated
        y_est = y_true - 0.9
        c = _COLOURS[k % len(_COLOURS)]
        rows += [t[tm], t[~tm], e[em], e[~em]]
        offs += [y_true, y_true, y_est, y_est]
        cols += ["k", _ERR, c, _ERR]
        r = p.get("roa")
        lag_txt = f", lag {lag:+d}" if lag else ""
        labels += [f"true {i}", f"est {j}  {kind} {r:.2f}{lag_txt}" if r is not None else f"est {j}"]
        ticks += [y_true, y_est]
        if k % 2 == 0:
            ax.axhspan(y_est - 0.5, y_true + 0.5, color="#f2f2f2", lw=0, zorder=0)
    _events(ax, rows, offs, fs, colors=cols, height=0.7, lw=0.9)
    ax.set_xlim(0, rec.n_samples / fs)
    ax.set_ylim(-0.3, 2 * max(n, 1) - 0.2)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    for tl, clr in zip(ax.get_yticklabels(), [c for k in range(n) for c in ("k", _COLOURS[k % len(_COLOURS)])]):
        tl.set_color(clr)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("time (s)")
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    if n == 0:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no estimated unit matches a true unit", ha="center", va="center",
                transform=ax.transAxes)
    method = report.get("method") or getattr(dec, "method", "")
    head = title or (
        f"{method}: {summ.get('n_matched', n)} of {summ.get('n_true', len(true_sp))} true MUs matched, "
        f"{summ.get('found_90', '?')} with {kind} ≥ 0.9; {summ.get('n_est', len(est_sp))} estimates "
        f"({summ.get('n_false', '?')} false, {summ.get('n_duplicates', '?')} duplicates)")
    ax.set_title(head + "\nblack: true   colour: estimated   red: missed / false discharges", fontsize=9)
    return _finish(fig, path)


# ---------------------------------------------------------------- yield vs SNR
def _snr_value(label) -> float | None:
    if isinstance(label, (int, float, np.integer, np.floating)):
        return float(label)
    s = str(label).strip().lower().replace("db", "").replace("snr", "").strip(" =:_")
    try:
        return float(s)
    except ValueError:
        return None


def snr_yield(results: Mapping[str, Mapping], path=None, *, title: str | None = None,
              ylabel: str = "MUs found") -> Figure:
    """MUs found vs SNR for several methods: ``{method: {snr_label: n_found}}``.

    Labels such as ``20``, ``"20 dB"`` or ``"snr=20"`` are placed on a numeric SNR axis;
    other labels are categories in order of first appearance.  Missing values leave a gap.
    """
    labels: list = []
    for d in results.values():
        for k in d:
            if k not in labels:
                labels.append(k)
    vals = [_snr_value(k) for k in labels]
    numeric = bool(labels) and all(v is not None for v in vals)
    if numeric:
        order = np.argsort(vals, kind="stable")
        labels = [labels[i] for i in order]
        xs = np.array([vals[i] for i in order])
    else:
        xs = np.arange(len(labels), dtype=np.float64)
    fig = _new_figure((6.4, 4.2))
    ax = fig.subplots(1, 1)
    markers = "osD^vP*X"
    for m, (method, d) in enumerate(results.items()):
        y = np.array([np.nan if d.get(k) is None else float(d.get(k)) for k in labels])
        ax.plot(xs, y, marker=markers[m % len(markers)], color=_COLOURS[m % len(_COLOURS)], lw=1.6,
                label=str(method))
    if numeric:
        ax.set_xlabel("SNR (dB)")
        ax.set_xticks(xs)
        ax.set_xticklabels([_fmt_num(v) for v in xs])
    else:
        ax.set_xlabel("SNR")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(k) for k in labels])
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if results:
        ax.legend(frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


# ---------------------------------------------------------------- simulation overview
def _busiest_window(rec, length_s: float) -> float:
    """Start (s) of the ``length_s`` window with the highest excitation (else EMG power)."""
    N, fs = rec.n_samples, rec.fs
    L = min(N, max(1, int(round(length_s * fs))))
    x = np.asarray(rec.excitation, np.float64) if rec.excitation is not None else \
        np.mean(np.asarray(rec.emg, np.float64) ** 2, axis=0)
    if len(x) != N or L >= N:
        return 0.0
    c = np.concatenate([[0.0], np.cumsum(x)])
    win = c[L:] - c[:-L]
    best = np.flatnonzero(win >= win.max() * (1 - 1e-6))
    return float(best[len(best) // 2] / fs)  # the middle of the plateau


def simulation_overview(rec, path=None, *, title: str | None = None, length_s: float = 1.0) -> Figure:
    """Three panels: MUAP map of the largest (active) unit, raster with excitation, 1-s EMG.

    The EMG window (shaded in the raster) is taken where the excitation is highest; its
    channels are the grid column through the largest unit's strongest channel, top to bottom
    (so propagation along the fibres is visible), or 16 evenly spaced channels without a grid.
    """
    fs = rec.fs
    has_truth = rec.true_muaps is not None or rec.true_spikes is not None
    if has_truth:
        fig = _new_figure((14, 8.2))
        gs = fig.add_gridspec(2, 2, width_ratios=[1.0, 2.6], height_ratios=[1.0, 1.15])
        ax_m = fig.add_subplot(gs[:, 0])
        ax_r = fig.add_subplot(gs[0, 1])
        ax_e = fig.add_subplot(gs[1, 1])
    else:  # a plain recording: only the EMG panel
        fig = _new_figure((12, 6.5))
        ax_m = ax_r = None
        ax_e = fig.add_subplot(1, 1, 1)
    cm, shape = (None, None)
    if rec.channel_map is not None or rec.grid_shape is not None:
        cm, shape = _grid_layout(rec.n_channels, rec.channel_map, rec.grid_shape)
    # MUAP map of the largest unit that fires (the largest by size may not be recruited)
    u = None
    if ax_m is None:
        pass
    elif rec.true_muaps is not None and len(rec.true_muaps):
        M = np.asarray(rec.true_muaps, np.float64)
        active = None
        if rec.true_spikes is not None:
            active = [i for i, s in enumerate(rec.true_spikes) if len(s)] or None
        u = _largest_units(M, 1, active)[0]
        if cm is None:
            cm, shape = _grid_layout(M.shape[1], None, None)
        _draw_muap_grid(ax_m, M[u], cm, shape, fs, uv_per_cell=_uv_per_cell(M[u]), color="#1f4e8c",
                        title=f"MUAP of MU {u} (largest active, {np.ptp(M[u], axis=1).max():.0f} µV p-p)\n"
                              f"grid {shape[0]}x{shape[1]}, row 0 at top")
    else:
        ax_m.set_axis_off()
        ax_m.text(0.5, 0.5, "no true MUAPs", ha="center", va="center", transform=ax_m.transAxes)
    # EMG window and channels
    start = _busiest_window(rec, length_s)
    if u is not None and cm is not None:
        peak_ch = int(np.argmax(np.ptp(rec.true_muaps[u], axis=1)))
        col = cm[peak_ch, 1]
        chans = np.flatnonzero(cm[:, 1] == col)
        chans = chans[np.argsort(cm[chans, 0])]
        labels = [f"r{cm[c, 0]} c{cm[c, 1]}" for c in chans]
        emg_title = f"EMG, grid column {col} (through MU {u}'s strongest channel), rows top to bottom"
    else:
        chans = _default_channels(rec.n_channels)
        labels = None
        emg_title = (f"EMG, {len(chans)} of {rec.n_channels} channels" if len(chans) < rec.n_channels
                     else f"EMG, {rec.n_channels} channels")
    # raster
    if ax_r is None:
        pass
    elif rec.true_spikes is not None:
        _draw_raster(ax_r, rec.true_spikes, fs, rec.n_samples, rec.excitation,
                     highlight=(start, min(rec.duration_s, start + length_s)))
        n_act = sum(len(s) > 0 for s in rec.true_spikes)
        ax_r.set_title(f"true discharges: {n_act} of {len(rec.true_spikes)} MUs active "
                       f"(shaded: EMG window below)", fontsize=9)
    else:
        ax_r.set_axis_off()
        ax_r.text(0.5, 0.5, "no ground-truth spikes", ha="center", va="center", transform=ax_r.transAxes)
    _draw_emg(ax_e, rec.emg, fs, start, length_s, chans, labels=labels)
    ax_e.set_title(emg_title, fontsize=9)
    meta = rec.meta or {}
    if title is None:
        bits = [str(meta.get("anatomy", "recording"))]
        if meta.get("snr_db") is not None:
            bits.append(f"SNR {meta['snr_db']:g} dB")
        bits.append(f"{rec.duration_s:g} s at {fs:g} Hz, {rec.n_channels} channels")
        if meta.get("excitation"):
            bits.append(f"excitation {meta['excitation']}")
        title = "   ".join(bits)
    fig.suptitle(title, fontsize=11)
    return _finish(fig, path)


def fit_muaps(fit, rec=None, units: Sequence[int] | None = None, path=None, *, max_units: int = 4) -> Figure:
    """Observed (spike-triggered, black) vs fitted model (red) MUAPs on the grid for a few units.

    fit: :class:`bmiss.fit.SubjectFit`.  rec: the recording (for its channel map; optional).
    units: indices into the fitted units (default: the ``max_units`` largest).  Each panel's title
    gives the unit's explained variance; all channels of a panel share one amplitude scale.
    """
    obs = np.asarray(fit.templates.muaps, np.float64)
    mod = np.asarray(fit.model_muaps, np.float64)
    cm_src = getattr(rec, "channel_map", None) if rec is not None else None
    shape_src = getattr(rec, "grid_shape", None) if rec is not None else None
    if shape_src is None:
        shape_src = fit.anatomy.grid.channel_grid_shape
    cm, shape = _grid_layout(obs.shape[1], cm_src, shape_src)
    if units is None:
        units = _largest_units(obs, max_units)
    units = [int(u) for u in np.atleast_1d(units)]
    n = max(len(units), 1)
    R, C = shape
    fig = _new_figure((min(max(1.6, 0.42 * C + 0.5) * n, 16), max(2.5, 0.36 * R + 0.9) + 0.35))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, u in zip(axes, units):
        upc = _uv_per_cell(obs[[u]])
        _draw_muap_grid(ax, obs[u], cm, shape, fit.templates.fs, uv_per_cell=upc, color="k", lw=0.9)
        _draw_muap_grid(ax, mod[u], cm, shape, fit.templates.fs, uv_per_cell=upc, color="#c0392b", lw=0.7)
        ax.set_title(f"unit {int(fit.unit_index[u])}: EV {fit.explained_variance[u]:.2f}", fontsize=9)
    fig.suptitle(f"observed (black) vs fitted model (red) MUAPs; overall EV {fit.overall_ev:.3f}", fontsize=10)
    return _finish(fig, path)


# ---------------------------------------------------------------- neural drive
def drive_rates(drive, reference=None, path=None, *, ref_label: str = "excitation", title: str | None = None,
                out_fs: float = 100.0) -> Figure:
    """Discharge rates over time with the reference (force or excitation) when there is one.

    drive: a :class:`bmiss.drive.NeuralDrive`. Top panel: each unit's smoothed discharge rate (Hz);
    bottom panel: the smoothed cumulative spike train (neural drive, pps). The reference
    ``[n_samples]`` is drawn on a twin axis of both panels, labelled ``ref_label``.
    """
    n = drive.n_samples
    step = max(1, int(round(drive.fs / out_fs)))
    t = np.arange(0, n, step) / drive.fs
    fig = _new_figure((10, 5.6))
    ax_r, ax_d = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    for i in range(drive.n_units):
        r = drive.rates_hz[i, ::step]
        if np.isfinite(r).any():
            ax_r.plot(t, r, color=_COLOURS[i % len(_COLOURS)], lw=0.9)
    ax_r.set_ylabel("discharge rate (Hz)")
    ax_r.set_ylim(bottom=0)
    ax_r.grid(alpha=0.3)
    ax_d.plot(t, drive.drive_pps[::step], color="k", lw=1.2)
    ax_d.set_ylabel("smoothed CST (pps)")
    ax_d.set_xlabel("time (s)")
    ax_d.set_ylim(bottom=0)
    ax_d.grid(alpha=0.3)
    ax_d.set_xlim(0, n / drive.fs)
    if reference is not None:
        ref = np.asarray(reference, np.float64).ravel()
        if ref.size != n:
            raise ValueError(f"reference has {ref.size} samples, the drive {n}: give one value per EMG sample")
        for ax in (ax_r, ax_d):
            axx = ax.twinx()
            axx.plot(t, ref[::step], color="0.45", lw=1.0, ls="--")
            axx.set_ylabel(ref_label, color="0.35")
            axx.tick_params(axis="y", colors="0.35")
            lo, hi = float(np.nanmin(ref)), float(np.nanmax(ref))
            axx.set_ylim(min(0.0, lo), hi * 1.05 if hi > 0 else 1.0)
    ax_r.set_title(title or f"{drive.n_units} units, Hann window {drive.window_s * 1e3:.0f} ms", fontsize=10)
    return _finish(fig, path)
