"""Supervisor for BimanGrasp's main.py: plans rounds, runs them on a GPU pool, merges each
object's grasps into one final.npz, resumable after anything.

The parts, lowest first (docs/architecture.md draws them; tests/test_architecture.py keeps
the imports pointing one way): ``core`` (the pure state machine), ``config``, ``storage``
(the experiment's files), ``dataset`` (grasps: round results, final.npz, dedup, quality,
integrity), ``gpus`` (probes, admission, samples), ``backends`` (where a round's child
runs: local, Ray), ``run`` (the async shell), ``commands`` (the command line) and
``emulator`` (a stand-in for main.py); ``logs`` is shared by all. A part may import only
the parts below it.
"""

__version__ = "0.1.0"
