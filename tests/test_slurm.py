"""The Slurm backend's policy, by plain function calls (no Slurm needed): the command
lines handed to Slurm, how a job or step ended as an outcome, the queue's answers, which
jobs a restarted supervisor adopts, which node is excluded, the allocation's places,
the in-job task, and what the state machine records of a placed round."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from conftest import Layout
from supervisor.backends.slurm import allocation, states, submit
from supervisor.backends.slurm.adopt import sort_found
from supervisor.backends.slurm.connect import open_backend, refusal, resolve_mode
from supervisor.backends.slurm.nodes import NodeHealth
from supervisor.backends.slurm.queue import FORMAT, JobInfo, Queue, parse
from supervisor.config.schema import BackendSettings
from supervisor.config.toml import ConfigError
from supervisor.core import events as ev
from supervisor.core.records import GpuStatus
from supervisor.core.transitions import apply
from supervisor.gpus.probe import GpuError
from supervisor.storage import store

S = states


# -- what is handed to Slurm -------------------------------------------------------------
def test_sbatch_gets_the_round_its_tag_files_and_options_with_the_users_last() -> None:
    s = BackendSettings(kind="slurm", partition="gpu", qos="", time_limit="2:00:00",
                        gres="gpu:a100:1", sbatch_args=("--mem=32G", "--partition=big"))
    argv = submit.sbatch_argv(s, "e__o__r3", "supervisor:e:ab", Path("/x/o.out"),
                              Path("/x/o.err"), Path("/cwd"), 4, exclude=("n7", "n2"))
    assert argv[:2] == ["sbatch", "--parsable"]
    for option in ("--job-name=e__o__r3", "--comment=supervisor:e:ab", "--output=/x/o.out",
                   "--error=/x/o.err", "--chdir=/cwd", "--no-requeue", "--ntasks=1",
                   "--cpus-per-task=4", "--gres=gpu:a100:1", "--time=2:00:00",
                   "--partition=gpu", "--exclude=n2,n7"):
        assert option in argv, option
    assert not any(a.startswith(("--qos", "--account")) for a in argv)  # "" is the default
    assert argv[-2:] == ["--mem=32G", "--partition=big"]  # after ours: they win


def test_steps_ask_for_one_task_on_their_node_unbuffered() -> None:
    argv = submit.srun_argv(BackendSettings(kind="slurm"), "e__o__r0", "n1", Path("/c"), 2)
    assert argv[:3] == ["srun", "--exact", "--unbuffered"]
    assert "--nodelist=n1" in argv and "--gres=gpu:1" in argv and "--cpus-per-task=2" in argv
    assert not any(a.startswith("--time") for a in argv)


def test_the_batch_script_execs_the_task_with_the_command_and_environment_intact() -> None:
    argv = ["python", "main.py", "--name", "it's a name", "--gpu", "{gpu}"]
    script = submit.batch_script(argv, {"OMP_NUM_THREADS": "2", "X": "a b"})
    first, line = script.splitlines()
    assert first == "#!/bin/sh" and line.startswith("exec ")
    assert shlex.split(line[5:]) == submit.task_argv(argv, {"OMP_NUM_THREADS": "2", "X": "a b"})
    assert shlex.split(line[5:])[-6:] == argv


def test_the_tag_names_the_experiment_folder_and_identity(layout: Layout) -> None:
    config = layout.config()
    tag = submit.experiment_tag(config)
    assert tag.startswith("supervisor:t:") and tag == submit.experiment_tag(layout.config())
    assert tag != submit.experiment_tag(layout.config(round_batch_size=8))
    assert tag != submit.experiment_tag(replace(config, experiments_dir=Path("/elsewhere")))


@pytest.mark.parametrize("text,seconds", [
    ("30", 1800), ("1:30", 90), ("1:00:00", 3600), ("2-3", 2 * 86400 + 3 * 3600),
    ("1-2:30", 86400 + 2 * 3600 + 30 * 60), ("1-0:0:1", 86401), ("", None),
    ("UNLIMITED", None), ("infinite", None)])
def test_slurm_time_formats_read_as_seconds(text: str, seconds: float | None) -> None:
    assert submit.time_limit_s(text) == seconds


@pytest.mark.parametrize("text", ["1h", "1:2:3:4", "-5", "a-1"])
def test_a_bad_time_limit_is_refused_before_slurm_is_asked(layout: Layout, text: str) -> None:
    with pytest.raises(ValueError):
        submit.time_limit_s(text)
    config = layout.config(gpus="all", backend={"kind": "slurm", "time_limit": text})
    with pytest.raises(GpuError, match=r"time_limit = .*Slurm's format"):
        open_backend(config)


def test_slurm_settings_refuse_gpu_lists_and_packing(layout: Layout) -> None:
    with pytest.raises(ConfigError, match='"all" with .backend. kind = "slurm"'):
        layout.config(gpus=[0], backend={"kind": "slurm"})
    with pytest.raises(ConfigError, match='shard:1'):
        layout.config(gpus="all", backend={"kind": "slurm"}, gpu={"max_rounds_per_gpu": "auto"})


def test_auto_mode_is_steps_inside_an_allocation() -> None:
    assert resolve_mode("auto", {"SLURM_JOB_ID": "12"}) == "steps"
    assert resolve_mode("auto", {}) == "jobs"
    assert resolve_mode("jobs", {"SLURM_JOB_ID": "12"}) == "jobs"


# -- how it ended ----------------------------------------------------------------------
@pytest.mark.parametrize("state,code,reason,ours,kind,says", [
    ("COMPLETED", 0, "None", False, S.OK, "completed"),
    ("FAILED", 3, "NonZeroExitCode", False, S.FAILED, "exit code 3"),
    ("FAILED", -11, "JobLaunchFailure", False, S.FAILED, "signal 11, SIGSEGV (JobLaunchFailure)"),
    ("TIMEOUT", -15, "TimeLimit", False, S.TIME_LIMIT, "time_limit: Slurm ended the job at "
                                                       "[backend] time_limit = '30' after 0h01m05s"),
    ("DEADLINE", None, "", False, S.TIME_LIMIT, "time_limit"),
    ("CANCELLED", -15, "None", True, S.STOPPED, "cancelled by the supervisor"),
    ("CANCELLED", -15, "None", False, S.CAPACITY, "cancelled by someone else"),
    ("NODE_FAIL", -15, "NodeDown", False, S.CAPACITY, "its node failed (NodeDown)"),
    ("PREEMPTED", None, "", False, S.CAPACITY, "preempted"),
    ("BOOT_FAIL", None, "", False, S.CAPACITY, "did not boot"),
    ("OUT_OF_MEMORY", -9, "", False, S.FAILED, "out of host memory"),
])
def test_a_jobs_end_is_an_outcome(state: str, code: int | None, reason: str, ours: bool,
                                  kind: str, says: str) -> None:
    end = S.job_end(state, code, reason, ours, 65.0, "30")
    assert end.kind == kind and says in end.reason, end


@pytest.mark.parametrize("raw,code", [(0, 0), (768, 3), (15, -15), (9, -9), (36608, 143),
                                      (None, None)])
def test_squeues_exit_code_is_a_wait_status(raw: int | None, code: int | None) -> None:
    assert S.wait_status(raw) == code


@pytest.mark.parametrize("text,code", [("0:0", 0), ("3:0", 3), ("0:15", -15), ("", None),
                                       ("x", None)])
def test_scontrols_exit_code_is_code_and_signal(text: str, code: int | None) -> None:
    assert S.scontrol_exit(text) == code


STEPD = "slurmstepd-n1: error: *** STEP 21.0 ON n1 CANCELLED AT 2026-12-07T18:14:47"


@pytest.mark.parametrize("lines,code,ours,kind,says", [
    ([], 0, False, S.OK, "completed"),
    (["srun: error: n0: task 0: Exited with exit code 3"], 3, False, S.FAILED, "exit code 3"),
    # srun exits 0 after a node failure: its line says what happened
    (["srun: error: Node failure on n1"], 0, False, S.CAPACITY, "node failure on n1"),
    ([STEPD + " DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***"], 0, False, S.CAPACITY,
     "node failure on n1"),
    ([STEPD + " DUE TO TIME LIMIT ***"], -15, False, S.TIME_LIMIT, "time_limit"),
    ([STEPD + " DUE TO PREEMPTION ***"], -15, False, S.CAPACITY, "preempted"),
    ([STEPD + " ***", "srun: error: n1: task 0: Killed"], 137, False, S.CAPACITY,
     "someone else"),
    ([STEPD + " ***"], 137, True, S.STOPPED, "by the supervisor"),
])
def test_a_steps_end_is_read_from_what_srun_printed(lines: list[str], code: int, ours: bool,
                                                    kind: str, says: str) -> None:
    end = S.step_end(lines, code, ours, 3.0, "")
    assert end.kind == kind and says in end.reason, end


def test_the_tasks_lines_are_read_back() -> None:
    line = "supervisor.slurm: placed node=n0 gpu=2 job=12 step=batch pid=55"
    assert S.placed(line) == {"node": "n0", "gpu": 2, "job_id": "12", "pid": "55"}
    step = S.placed("supervisor.slurm: placed node=n1 gpu=0,1 job=12 step=4 pid=9")
    assert step is not None and step["job_id"] == "12.4" and step["gpu"] == "0,1"
    assert S.exited("supervisor.slurm: exit=-15") == -15 and S.exited("exit=0") is None
    assert S.placed("main.py: placed node=x") is None


# -- the queue -----------------------------------------------------------------------------
def test_squeues_answer_is_parsed_with_anything_in_the_name() -> None:
    text = ("5|FAILED|NonZeroExitCode|n0|768|supervisor:e:ab|e__a|b__r1\n"
            "8|PENDING|Priority||0|(null)|other")  # no newline at the end
    jobs = parse(text)
    assert jobs[0] == JobInfo("5", "FAILED", "NonZeroExitCode", "n0", 768, "supervisor:e:ab",
                              "e__a|b__r1")
    assert jobs[1].comment == "" and jobs[1].nodes == ""
    assert FORMAT.endswith(",Name:") and FORMAT.count("|") == 6


def test_a_watched_job_missing_from_a_poll_has_left_the_queue_unless_it_was_too_early() -> None:
    q = Queue("tag")
    q._polls = 3  # three polls had started before this job was submitted
    q.watch("7")
    q.update([], poll=2)  # that poll began before sbatch returned: no verdict
    assert "7" not in q.gone
    q.update([JobInfo("7", "RUNNING")], poll=3)
    assert q.info["7"].state == "RUNNING"
    q.update([], poll=4)
    assert "7" in q.gone
    q.forget("7")
    assert "7" not in q.gone and "7" not in q.info


def test_a_change_wakes_the_job_that_waits_on_it() -> None:
    async def main() -> None:
        q = Queue("tag")
        q.watch("1")
        woke = []

        async def waiter() -> None:
            await q.changed("1", 30.0)
            woke.append(q.info["1"].state)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0)
            q.update([JobInfo("1", "COMPLETED")])
        assert woke == ["COMPLETED"]
    anyio.run(main)


def test_status_names_what_squeue_said_when_it_cannot_read_the_queue(
        layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.backends.slurm.overview import overview, render

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    fake = bin_ / "squeue"
    fake.write_text("#!/bin/sh\necho 'squeue: error: Invalid user: nobody' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    config = layout.config(gpus="all", backend={"kind": "slurm"})
    assert render(overview(config)) == [
        "slurm: queue not read (squeue: error: Invalid user: nobody)"]
    fake.write_text("#!/bin/sh\nexit 4\n")  # says nothing: its exit status
    assert render(overview(config)) == ["slurm: queue not read (squeue: exit status 4)"]


# -- a restarted supervisor's jobs -----------------------------------------------------------
def job(job_id: str, name: str, state: str) -> JobInfo:
    return JobInfo(job_id, state, name=name)


def test_adopted_are_the_live_and_last_running_jobs_of_rounds_to_run() -> None:
    found = [job("10", "e__a__r0", "RUNNING"),  # to run again: adopted
             job("11", "e__a__r1", "PENDING"),  # to run: adopted
             job("12", "e__b__r0", "RUNNING"),  # its object is done: cancelled
             job("13", "e__a__r2", "COMPLETED"),  # ended while no one watched: adopted
             job("5", "e__a__r3", "FAILED"),  # an earlier attempt, recorded: left alone
             job("20", "e__a__r4", "RUNNING"), job("21", "e__a__r4", "PENDING")]  # twice
    running = {"e__a__r0": "10", "e__a__r2": "13", "e__a__r3": "9"}
    to_run = {"e__a__r0", "e__a__r1", "e__a__r2", "e__a__r3", "e__a__r4"}
    adopt, cancel = sort_found(found, running, to_run)
    assert {n: j.job_id for n, j in adopt.items()} == {
        "e__a__r0": "10", "e__a__r1": "11", "e__a__r2": "13", "e__a__r4": "21"}
    assert sorted(j.job_id for j in cancel) == ["12", "20"]


# -- node health ------------------------------------------------------------------------------
def test_a_node_failing_rounds_of_several_objects_while_others_succeed_is_excluded() -> None:
    h = NodeHealth(after=3)
    h.succeeded("n0", "r0")
    assert h.failed("n1", "a", "a1", "exit code 1") is None
    assert h.failed("n1", "b", "b1", "exit code 1") is None
    why = h.failed("n1", "a", "a2", "exit code 1")
    assert why and "3 rounds in a row" in why and "n0" in why
    assert h.excluded == {"n1": why}


def test_a_node_is_not_excluded_for_one_broken_object_nor_when_nothing_succeeds() -> None:
    h = NodeHealth(after=2)
    for i in range(3):
        assert h.failed("n1", "a", f"a{i}", "exit 1") is None  # no other node succeeded
    h.succeeded("n0", "b0")
    h2 = NodeHealth(after=2)
    h2.succeeded("n0", "x")
    assert h2.failed("n1", "a", "a0", "exit 1") is None
    assert h2.failed("n1", "a", "a1", "exit 1") is None  # one object: the mesh, not the node
    # ...until one of those rounds succeeds elsewhere
    assert h2.succeeded("n0", "a1") == [("n1", h2.excluded["n1"])]


def test_a_success_clears_a_nodes_streak() -> None:
    h = NodeHealth(after=2)
    h.succeeded("n0", "x")
    h.failed("n1", "a", "a0", "e")
    h.succeeded("n1", "b0")
    assert h.failed("n1", "b", "b1", "e") is None and not h.excluded


# -- the allocation ---------------------------------------------------------------------------
def test_compressed_host_lists_are_expanded() -> None:
    assert allocation.hostnames("n[0-2,7],gpu-a[08-10],login") == [
        "n0", "n1", "n2", "n7", "gpu-a08", "gpu-a09", "gpu-a10", "login"]


def test_the_allocation_places_are_its_gpus_over_what_one_step_asks() -> None:
    text = ("   JOB_GRES=gpu:10\n"
            "     Nodes=n[0-1] CPU_IDs=4-7 Mem=0 GRES=gpu:4(IDX:0-3)\n"
            "     Nodes=n5 CPU_IDs=0-1 Mem=0 GRES=gpu:a100:2(IDX:0-1),shard:8(2/4,2/4)\n"
            "     Nodes=n6 CPU_IDs=0-1 Mem=0 GRES=\n")
    assert allocation.places(text, "gpu:1") == {"n0": 4, "n1": 4, "n5": 2}
    assert allocation.places(text, "gpu:2") == {"n0": 2, "n1": 2, "n5": 1}
    assert allocation.places(text, "shard:1") == {"n5": 8}


# -- the task inside the job ------------------------------------------------------------------
TASK = str(Path(submit.TASK))


def run_task(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    full.update(SLURMD_NODENAME="n1", SLURM_JOB_ID="77", **env)
    return subprocess.run([sys.executable, "-S", TASK, "--env=MY=1", "--", *command],
                          env=full, capture_output=True, text=True, timeout=30)


def test_the_task_gives_the_command_the_gpu_the_job_sees() -> None:
    show = ("import os, sys; print(sys.argv[1:], os.environ['CUDA_VISIBLE_DEVICES'], "
            "os.environ['CUDA_DEVICE_ORDER'], os.environ['MY']); sys.exit(5)")
    done = run_task([sys.executable, "-c", show, "--gpu", "{gpu}", "cuda:{gpu}"],
                    {"CUDA_VISIBLE_DEVICES": "3"})
    lines = done.stdout.splitlines()
    assert S.placed(lines[0])["node"] == "n1" and S.placed(lines[0])["gpu"] == 3
    assert lines[1] == "['--gpu', '3', 'cuda:3'] 3 PCI_BUS_ID 1"
    assert S.exited(lines[2]) == 5 and done.returncode == 5


def test_the_task_ends_the_way_its_command_did_and_refuses_a_job_without_a_gpu() -> None:
    done = run_task([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 11)"],
                    {"CUDA_VISIBLE_DEVICES": "0"})
    assert done.returncode == -11 and "exit=-11" in done.stdout
    done = run_task(["true"], {})
    assert done.returncode == 2 and "no GPU" in done.stdout and "gres" in done.stdout


# -- the state machine ---------------------------------------------------------------------------
def test_a_placed_round_carries_its_job_node_and_gpu_and_places_are_never_quarantined(
        layout: Layout) -> None:
    config = layout.config(gpus="all", backend={"kind": "slurm"},
                           gpu={"quarantine_after": 1})
    state = store.new_state(config)
    assert not state.policy.quarantine
    places = ("slurm/gpu0", "slurm/gpu1")
    apply(state, ev.ObjectsRegistered(config.object_codes, 10))
    apply(state, ev.SupervisorStarted(1, "h", (), 0.0, gpus=places))
    apply(state, ev.RoundStarted("obj_a", 0, places[0], 1.0, "slurm"))
    apply(state, ev.RoundPlaced("obj_a", 0, "41"))
    apply(state, ev.RoundPlaced("obj_a", 0, "41", "n3", 2))
    apply(state, ev.RoundStarted("obj_b", 0, places[1], 1.0, "slurm"))
    apply(state, ev.RoundProduced("obj_b", 0, 4, 4, 2.0, 1.0))
    effects = apply(state, ev.RoundFailed("obj_a", 0, places[0], "exit code 3", 2.0, 1.0, 3))
    rnd = state.round_of("obj_a", 0)
    assert (rnd.job_id, rnd.node, rnd.device) == ("41", "n3", 2)
    logged = next(e for e in effects if getattr(e, "event", "") == "round_failed")
    assert logged.fields["node"] == "n3" and logged.fields["gpu"] == 2
    assert logged.fields["job_id"] == "41"
    assert rnd.failures[-1]["job_id"] == "41" and rnd.failures[-1]["node"] == "n3"
    assert state.gpus[places[0]].status == GpuStatus.HEALTHY
    apply(state, ev.RoundStarted("obj_a", 0, places[0], 3.0, "slurm"))
    assert rnd.job_id is None and rnd.device is None  # a new attempt, a new job


# -- a job that left the queue unseen ------------------------------------------------------
class StubHost:
    """What a JobRound needs of its backend, with Slurm's records scripted."""

    def __init__(self, record: dict[str, str] | None) -> None:
        self.tag, self.queue, self.nodes = "tag", Queue("tag"), NodeHealth(3)
        self.draining, self.ours, self.live, self.steps = False, set(), set(), {}
        self.record = record

    def take_adopted(self, name: str) -> None:
        return None

    async def cancel(self, job_ids: list[str], *options: str) -> None:
        pass

    async def job_record(self, job_id: str) -> dict[str, str] | None:
        return self.record

    def judge_node(self, job: object, end: object) -> None:
        pass


def resolve(layout: Layout, record: dict[str, str] | None, code: int | None = None,
            result: bool = False) -> S.End:
    from supervisor.backends.job import RoundJob
    from supervisor.backends.slurm.host import RoundCall
    from supervisor.backends.slurm.jobs import JobRound
    from supervisor.storage import paths

    config = layout.config(gpus="all", backend={"kind": "slurm"})
    job = RoundJob("obj_a", 0, "t__obj_a__r0", 1000, "slurm/gpu0", 1)
    if result:
        path = paths.result(config, job.name, job.object_code)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    call = RoundCall(config, job, [], lambda s, l: None, lambda p: None, anyio.Event(),
                     anyio.Event())
    round_ = JobRound(StubHost(record), call)
    round_.job_id, call.code = "9", code

    async def main() -> S.End:
        return await round_._resolve_gone()
    return anyio.run(main)


def test_a_job_gone_from_the_queue_is_resolved_from_slurms_records_then_its_files(
        layout: Layout) -> None:
    end = resolve(layout, {"JobState": "FAILED", "ExitCode": "3:0", "Reason": "NonZero"})
    assert (end.kind, end.exit_code) == (S.FAILED, 3)
    assert resolve(layout, {"JobState": "NODE_FAIL", "ExitCode": "0:9"}).kind == S.CAPACITY
    assert resolve(layout, None, code=0).kind == S.OK  # its task's own exit line
    assert resolve(layout, None, code=2).kind == S.FAILED
    unknown = resolve(layout, None)
    assert unknown.kind == S.CAPACITY and "no record" in unknown.reason  # never assumed
    assert resolve(layout, None, result=True).kind == S.OK  # read and checked as any result


def test_the_live_view_shows_why_a_round_waits_in_the_queue() -> None:
    import io

    from supervisor.run.live import LiveView, Snapshot

    snap = Snapshot("t", False, 1, 0, 0, 10, {"slurm/gpu0": "", "slurm/gpu1": ""},
                    running=[("slurm/gpu0", "t__a__r0", None), ("slurm/gpu1", "t__a__r1", None)],
                    waiting={"t__a__r0": "pending (QOSMaxJobsPerUserLimit)"})
    lines = LiveView(lambda: snap, io.StringIO()).render()
    assert "  slurm GPU 0: t__a__r0 pending (QOSMaxJobsPerUserLimit)" in lines
    assert "  slurm GPU 1: t__a__r1 starting" in lines


def test_without_slurm_the_cluster_tests_skip_outside_ci_and_fail_under_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import slurmtest

    monkeypatch.setattr(slurmtest, "missing", lambda: ["slurmctld", "munged"])
    monkeypatch.setattr(slurmtest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="missing slurmctld, munged"):
        slurmtest.need_slurm()
    monkeypatch.setattr(slurmtest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        slurmtest.need_slurm()


def test_options_refused_for_want_of_a_node_up_also_name_the_nodes_state() -> None:
    """A controller just restarted says "node configuration is not available" until its
    nodes register: the line must not only blame the config."""
    bad = refusal("allocation failure: Invalid partition name specified")
    assert "[backend] partition" in bad and "sinfo" not in bad
    busy = refusal("allocation failure: Requested node configuration is not available")
    assert "[backend] partition" in busy and "`sinfo -N`" in busy and "register" in busy
