"""The Slurm backend: one supervisor (on a login node, or inside an allocation) runs each
round as a Slurm job (``mode = "jobs"``) or as a job step of its allocation
(``mode = "steps"``); Slurm does the placement. ``backend`` (SlurmBackend, the backend
interface, and ``open_backend``, the start-up checks) composes ``jobs`` (a round as a
batch job, its output files followed by ``follow``) and ``steps`` (a round as an ``srun``
step of the allocation, ``allocation`` says which nodes and GPUs it holds), over
``commands`` (Slurm's own commands, retried with backoff while the controller is away)
and ``queue`` (one ``squeue`` per poll for all of this experiment's jobs). Pure policy,
tested by plain calls: ``submit`` (the sbatch and srun command lines, the experiment's
tag, time limits), ``states`` (how a job or step ended, as an outcome), ``adopt`` (which
jobs a restarted supervisor keeps or cancels) and ``nodes`` (which node to exclude).
``task`` runs inside the job or step (standard library only, like ``launch``): it reads
the GPU Slurm gave, fills in ``{gpu}`` and starts main.py through ``launch``. Part of
``backends``: it imports what that part may.
"""
