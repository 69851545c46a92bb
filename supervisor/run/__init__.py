"""The run, the async shell: starting it (``start``: lock, open or resume the state through
``resume``), the ``supervisor`` that owns the task group and the signals, the
``dispatcher`` that starts rounds where the plan and the GPU pool allow, one round's life
(``rounds``) through a backend and how it ended (``endings``: signals, the OOM killer,
CUDA out of memory), the packing loop that feeds the meter (``packer``), the ``merger``, the only writer of the journal, the
snapshot and the datasets, cleanup of round folders and disk checks (``cleanup``), tqdm
parsing (``progress``) and the terminal's live view (``live``). It waits, spawns and
writes; every decision is the state machine's. It may import every part but ``commands``
and ``emulator``.
"""
