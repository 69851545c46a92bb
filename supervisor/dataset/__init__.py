"""The dataset: what a round's result file holds and how it is checked
(``results``), each object's ``final.npz`` (``final``: the columns, the atomic write, the
digest, and ``load``, the API for training code, also as ``supervisor.dataset.load``),
near-duplicate removal (``dedup``), quality figures (``quality``), export to main.py's
own format (``export``), and the one check that a final.npz is what the run delivered
(``integrity``). Plain Python, numpy and scipy (dedup's k-d tree); it may import ``core``, ``config`` and
``storage``, nothing of the run, the backends or the commands.
"""

from supervisor.dataset.final import DatasetError, load

__all__ = ["DatasetError", "load"]
