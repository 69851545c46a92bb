"""The GPUs: what a probe is (``probe``) and which one a config gets (``choose``), the
probes themselves, one file each (``nvml``, the real one; ``static``, a list without memory
figures; ``emulated``, the emulator's shared cards; ``fake``, for tests), reads that never
block the run (``reads``), the pool of rounds in flight with free-memory admission
(``pool``), each card's throughput per level from its rounds' progress (``meter``), and
utilisation samples (``samples``, the format; ``sampler``, the writer). Only ``nvml`` imports pynvml, lazily. It may import
``core``, ``config``, ``storage`` and ``logs``.
"""
