"""Where a round's child runs, and how it is started: what a backend is (``base``), one
round's exact command line and environment (``job``, the GPU trap handled), the runner
that starts a child in its own session, streams its lines and stops it (``runner``), the
launcher that leads its process group (``launch``) and the launcher for the public
main.py (``upstream_launcher``; both standard library only: they run in the child's
process tree), then the variants: ``local`` (this machine) and ``ray/`` (a Ray cluster:
the head's ``backend`` and ``cluster``, joining in ``connect``, what crosses the wire in
``remote``, each node's ``node``). It may import ``core``, ``config``, ``storage``,
``gpus`` and ``logs``; never the run or the commands.
"""
