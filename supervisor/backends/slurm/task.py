"""A round's task inside its Slurm job or step (standard library only: run as
``python -S task.py [--env=K=V]... -- COMMAND...``).

Only the job knows which GPU Slurm gave it (numbered globally on one node, from 0 under
cgroups on another): the task reads ``CUDA_VISIBLE_DEVICES`` as the job sees it, puts it
in place of ``{gpu}`` in the command (main.py sets ``CUDA_VISIBLE_DEVICES`` from
``--gpu`` itself, so both must be that value), prints one ``placed`` line for the
supervisor, and starts the command through ``launch.py`` in a session of its own, so
that the command's whole process group dies with the job. It forwards SIGTERM and
SIGINT (Slurm's cancel, time limit, preemption) to that group, waits, and prints one
``exit`` line before it exits the way the command did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PREFIX = "supervisor.slurm:"
PLACEHOLDER = "{gpu}"
LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "launch.py")
NO_GPU_EXIT = 2


def say(text: str) -> None:
    sys.stdout.write(f"{PREFIX} {text}\n")
    sys.stdout.flush()


def parse(args: list[str]) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    while args and args[0].startswith("--env="):
        key, _, value = args.pop(0)[len("--env="):].partition("=")
        env[key] = value
    if not args or args[0] != "--" or len(args) < 2:
        sys.exit("usage: python -S task.py [--env=K=V]... -- COMMAND [ARGS...]")
    return env, args[1:]


def main(args: list[str]) -> None:
    env, argv = parse(list(args))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    node = os.environ.get("SLURMD_NODENAME", "?")
    job = os.environ.get("SLURM_JOB_ID", "?")
    step = os.environ.get("SLURM_STEP_ID", "batch")
    if not visible or visible == "NoDevFiles":
        say(f"no GPU: Slurm set no CUDA_VISIBLE_DEVICES for job {job} on {node}; "
            "[backend] gres must ask for one (gpu:1, or a shard or MPS share)")
        sys.exit(NO_GPU_EXIT)
    child_env = {**os.environ, **env, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                 "CUDA_VISIBLE_DEVICES": visible}
    argv = [part.replace(PLACEHOLDER, visible) for part in argv]
    process = subprocess.Popen(
        [sys.executable, "-S", LAUNCH, str(os.getpid()), "--", *argv], env=child_env,
        start_new_session=True, stdin=subprocess.DEVNULL)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    say(f"placed node={node} gpu={visible} job={job} step={step} pid={process.pid}")
    while True:
        try:
            code = process.wait()
            break
        except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for safety)
            continue
    say(f"exit={code}")
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main(sys.argv[1:])
