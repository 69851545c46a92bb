"""An experiment's files on disk: where each one lives (``paths``), atomic writes
(``fsutil``) with their fault-injection seams (``faults``), the event journal
(``journal``) and the manifest snapshot (``manifest``) that together persist the state
machine (``store``), and the one-supervisor-per-experiment lock (``lock``). It may import
``core`` and ``config``.
"""
