"""The GPUs: what a probe is and which one a config gets (``probe``), the probes themselves,
one file each (``nvml``, the real one; ``static``, a list without memory figures;
``fake``, for tests), reads that never block the run (``reads``), the pool of rounds in
flight with free-memory admission (``pool``), and utilisation samples (``samples``, the
format; ``sampler``, the writer). Only ``nvml`` imports pynvml, lazily. It may import
``core``, ``config``, ``storage`` and ``logs``.
"""
