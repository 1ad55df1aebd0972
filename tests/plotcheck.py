"""What a reader of a matplotlib figure sees: the polylines inside the view (figure tests)."""
from __future__ import annotations

import numpy as np


def visible(ax, min_ptp: float = 0.0) -> list[np.ndarray]:
    """The drawn polylines of ``ax`` (lines and line collections), cut to the view limits.

    Keeps those with a point inside the axes and a y range > ``min_ptp`` (data units): what a
    reader sees. A blank plot, or data scaled outside the limits, gives an empty list.
    """
    segs = [np.column_stack([np.atleast_1d(ln.get_xdata()), np.atleast_1d(ln.get_ydata())]) for ln in ax.lines]
    for c in ax.collections:
        if hasattr(c, "get_segments"):
            segs += [np.asarray(sg) for sg in c.get_segments()]
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    out = []
    for sg in segs:
        sg = np.asarray(sg, float).reshape(-1, 2)
        inside = sg[(sg[:, 0] >= x0) & (sg[:, 0] <= x1) & (sg[:, 1] >= y0) & (sg[:, 1] <= y1)]
        if len(inside) and np.ptp(inside[:, 1]) >= min_ptp:
            out.append(inside)
    return out
