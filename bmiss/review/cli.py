"""``bmiss review DEC --recording REC``: review and edit a decomposition in the browser."""
from __future__ import annotations


def cmd_review(a) -> int:
    from pathlib import Path

    from .. import io
    from ..cli import _apply_geometry, _check_outputs
    from .server import default_out, review

    out = Path(a.out) if a.out else default_out(a.decomposition)
    _check_outputs([out], a.force, inputs=[a.decomposition, a.recording])
    rec = _apply_geometry(io.load_recording(a.recording), a)
    review(a.decomposition, a.recording, out=out, port=a.port, open_browser=not a.no_browser, force=a.force,
           rec=rec)
    return 0


def register(sub) -> None:
    """Add the ``review`` subcommand to the ``bmiss`` parser's subparsers ``sub``."""
    from ..cli import _geometry_args, _int_in

    p = sub.add_parser("review", help="review and edit a decomposition in the browser (local web app)",
                       description="Serve a local web page (127.0.0.1, random token) to inspect every unit "
                                   "(source, discharges, rate, MUAP, quality, duplicates) and edit it: delete/add "
                                   "discharges, remove rate outliers, update the filter, flag, delete, merge, "
                                   "split, undo. Save writes a new decomposition; the input is never changed.")
    p.add_argument("decomposition", help="decomposition .npz (read only)")
    p.add_argument("--recording", required=True, help="the recording it was made from (for MUAPs and updates)")
    p.add_argument("--port", type=_int_in(0, 65535), default=0, help="TCP port on 127.0.0.1 (default 0: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    p.add_argument("--out", default=None, help="where Save writes (default DEC.edited.npz)")
    p.add_argument("--force", action="store_true", help="let Save replace an existing --out")
    _geometry_args(p, "the recording's ")
    p.set_defaults(func=cmd_review)
