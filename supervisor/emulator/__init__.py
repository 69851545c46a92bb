"""An emulator of BimanGrasp's main.py on a CPU (``python -m supervisor.emulator``), the
child of the tests and the demo: its command line, files and output (``program``; its
``main`` is also ``supervisor.emulator.main``, for a ``main.py`` shim), its fault modes and
worker grandchild (``faults``), its deterministic grasps (``grasps``), the cards rounds
share (``cards``). It imports only ``dataset`` (the result format's names): it runs as a
child, apart from the supervisor.
"""

from supervisor.emulator.program import main

__all__ = ["main"]
