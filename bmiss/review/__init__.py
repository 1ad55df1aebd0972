"""Review and edit a decomposition (``bmiss review``).

:mod:`.edits` holds the browser-free edit operations (:class:`~.edits.Review`: a working copy of a
decomposition with an undo stack and an edit log), :mod:`.views` the decimated data the browser
draws, :mod:`.server` the local web app (Starlette on 127.0.0.1 with a random token) and
:mod:`.cli` the ``review`` subcommand.  Nothing here is imported by ``bmiss --help``.
"""
