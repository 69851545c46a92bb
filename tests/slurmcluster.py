"""A throwaway Slurm cluster on this machine, for the tests and the bench: munged,
slurmctld and one slurmd per node, all on loopback, each node with fake GPUs (character
devices made with mknod, /dev/tty* where that fails), no slurmdbd. Facts behind each
setting: ../shared/docs/slurm-notes.md.

Started as root (Slurm's daemons run as SlurmUser=root here) and stopped by pid, never by
name: jobs are cancelled first (a slurmctld killed under running jobs leaves slurmstepd
hanging), then the daemons by their pid files, then whatever process still carries this
cluster's marker in its environment (a leftover slurmstepd or job).

    python tests/slurmcluster.py start DIR   # prints the SLURM_CONF line to export
    python tests/slurmcluster.py stop DIR
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")
MARKER = "SUPERVISOR_TEST_SLURM"  # in every daemon's environment: how leftovers are told
READY_S = 30.0
STOP_S = 15.0


def missing() -> list[str]:
    """Slurm's and munge's programs that are not installed (empty: a cluster can start)."""
    found = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
             for name in DAEMONS}
    return [name for name, path in found.items() if path is None]


def _free_ports(n: int) -> list[int]:
    """``n`` consecutive ports free on loopback now (slurmd of node k listens on base+k)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65000:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return list(range(base, base + n))
        except OSError:
            continue
    raise RuntimeError("no free ports on loopback")


def _sbin(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


class SlurmCluster:
    """``nodes`` nodes ``n0``... with ``gpus`` fake GPUs and ``cpus`` CPUs each."""

    def __init__(self, base: Path | None = None, nodes: int = 2, gpus: int = 4,
                 cpus: int = 8) -> None:
        # Short: munge's socket path must stay under 108 characters.
        self.base = Path(base or tempfile.mkdtemp(prefix="slurm"))
        self.nodes, self.gpus, self.cpus = nodes, gpus, cpus
        self.conf = self.base / "slurm.conf"
        self.names = [f"n{i}" for i in range(nodes)]

    # -- paths ---------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client needs in its environment to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _pid_files(self) -> list[Path]:
        run = self.base / "run"
        return [run / f"slurmd-{n}.pid" for n in self.names] + [
            run / "slurmctld.pid", self.base / "munge" / "munged.pid"]

    # -- start ---------------------------------------------------------------------------
    def start(self) -> SlurmCluster:
        for sub in ("munge", "state/ctld", "run", "log", "dev"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base / "munge", 0o711)  # munged refuses a more open socket folder
        files = self._devices()
        ctld_port, *node_ports = _free_ports(1 + self.nodes)
        self._write_conf(ctld_port, node_ports, files)
        daemon_env = self._daemon_env()
        self._start_munge(daemon_env)
        self._run([_sbin("slurmctld"), "-f", str(self.conf)], daemon_env)
        for name in self.names:
            self._run([_sbin("slurmd"), "-f", str(self.conf), "-N", name], daemon_env)
        self.wait_idle()
        return self

    def _daemon_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, MARKER: str(self.base)}

    def _devices(self) -> str:
        """gres.conf's File= for one node: character devices (regular files are refused)."""
        dev = self.base / "dev"
        try:
            for i in range(self.gpus):
                path = dev / f"nvidia{i}"
                if not path.exists():
                    os.mknod(path, 0o666 | 0o020000, os.makedev(195, i))
            return f"{dev}/nvidia[0-{self.gpus - 1}]"
        except OSError:  # no CAP_MKNOD: any character devices serve
            return f"/dev/tty[0-{self.gpus - 1}]"

    def _write_conf(self, ctld_port: int, node_ports: list[int], files: str) -> None:
        b, host = self.base, socket.gethostname().split(".")[0]
        nodes = f"n[0-{self.nodes - 1}]"
        self.conf.write_text("\n".join([
            "ClusterName=test", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={ctld_port}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={b}/munge/munge.socket",
            f"StateSaveLocation={b}/state/ctld", f"SlurmdSpoolDir={b}/state/slurmd-%n",
            f"SlurmctldPidFile={b}/run/slurmctld.pid", f"SlurmdPidFile={b}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={b}/log/slurmctld.log", f"SlurmdLogFile={b}/log/slurmd-%n.log",
            "MailProg=/bin/true", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "MpiDefault=none",
            "SlurmdParameters=config_overrides", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt", f"JobCompLoc={b}/log/jobcomp.txt",
            "MinJobAge=300", "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "GresTypes=gpu", "JobRequeue=0",
            "ReturnToService=1", "KillWait=2", "SlurmdTimeout=10", "InactiveLimit=0",
            f"NodeName={nodes} NodeHostname={host} NodeAddr=127.0.0.1 "
            f"Port={node_ports[0]}-{node_ports[-1]} CPUs={self.cpus} RealMemory=4000 "
            f"Gres=gpu:{self.gpus} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        (b / "gres.conf").write_text(f"NodeName={nodes} Name=gpu File={files}\n")

    def _start_munge(self, env: dict[str, str]) -> None:
        m = self.base / "munge"
        key = m / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
            os.chmod(key, 0o400)
        self._run([_sbin("munged"), f"--socket={m}/munge.socket", f"--key-file={key}",
                   f"--log-file={m}/munged.log", f"--pid-file={m}/munged.pid",
                   f"--seed-file={m}/munged.seed", "--force"], env)

    def _run(self, argv: list[str], env: dict[str, str]) -> None:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()}")

    def client(self, *argv: str, check: bool = True) -> str:
        """Run a Slurm command against this cluster; its stdout."""
        done = subprocess.run(list(argv), env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def wait_idle(self, timeout_s: float = READY_S) -> None:
        """Until every node is idle (or mixed/allocated: up and answering)."""
        deadline = time.monotonic() + timeout_s
        states = ""
        while time.monotonic() < deadline:
            states = self.client("sinfo", "-h", "-N", "-o", "%N %t", check=False)
            seen = dict(line.split() for line in states.splitlines() if line.strip())
            if len(seen) == self.nodes and all(s in ("idle", "mix", "alloc") for s in seen.values()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"Slurm nodes not idle after {timeout_s:g} s: {states!r}; see "
                           f"{self.base}/log")

    # -- faults --------------------------------------------------------------------------
    def set_down(self, node: str) -> None:
        self.client("scontrol", "update", f"nodename={node}", "state=down",
                    "reason=test")

    def resume(self, node: str) -> None:
        """Back to service (already up: nothing to do)."""
        self.client("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        self.wait_idle()

    def stop_controller(self) -> None:
        """slurmctld away (a restart, a failover): jobs on the nodes run on."""
        pid = int((self.base / "run" / "slurmctld.pid").read_text().split()[0])
        _signal(pid, signal.SIGTERM)
        _wait_gone([pid], STOP_S)

    def start_controller(self) -> None:
        """slurmctld back, with the jobs its state files hold."""
        self._run([_sbin("slurmctld"), "-f", str(self.conf)], self._daemon_env())
        deadline = time.monotonic() + READY_S
        while " is UP" not in self.client("scontrol", "ping", check=False):
            if time.monotonic() > deadline:
                raise RuntimeError("slurmctld did not come back")
            time.sleep(0.05)

    def jobs(self) -> list[str]:
        """Ids of jobs pending or running (ended ones left out)."""
        out = self.client("squeue", "-h", "-o", "%i", check=False)
        return [line.strip() for line in out.splitlines() if line.strip()]

    # -- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, then stop the daemons by pid, then leftovers by marker."""
        if self.conf.exists():
            for job in self.jobs():
                self.client("scancel", job, check=False)
            deadline = time.monotonic() + STOP_S
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.05)
        pids = []
        for path in self._pid_files():
            try:
                pids.append(int(path.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        _wait_gone(pids, STOP_S)
        for pid in pids + _marked(str(self.base)):
            _signal(pid, signal.SIGKILL)
        _wait_gone(_marked(str(self.base)), STOP_S)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _marked(base: str) -> list[int]:
    """Processes whose environment carries this cluster's marker (never this one)."""
    tag = f"{MARKER}={base}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if tag in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    cluster = SlurmCluster(Path(argv[1]))
    if argv[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
