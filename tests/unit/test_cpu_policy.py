"""WORKER_CPU_POLICY: its parsing (a bad value stops the process naming the variable), and what a
thread does with it (jobs.engine.cpu_policy), each in a thread of its own so this process's stay normal."""
from __future__ import annotations

import os
import threading
import time

import pytest

from jobs.engine import cpu_policy
from project import env


@pytest.fixture(autouse=True)
def idle_cgroup_of_this_test(monkeypatch):
    """The idle cgroup these tests' job threads enter (where the machine has one: cgroup v1's cpu
    controller) is one of this process's, removed after the test: the shared `conveyor-idle` made
    by a unit test was left behind, empty, by every suite (unit tests run last, after every live
    test's teardown had removed it), and a unit test must not touch another run's workers' cgroup."""
    monkeypatch.setattr(cpu_policy, "IDLE_CGROUP", f"conveyor-idle-test-{os.getpid()}")
    yield
    group = cpu_policy.idle_cgroup()
    if group is not None and os.path.isdir(group):  # a job thread entered it: joined, its OS thread ends now
        assert cpu_policy.remove_idle_cgroup(group, patience=2), f"{group} could not be removed"


def in_a_thread(function):
    """function() run in a new thread; its result (or its exception, raised here)."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = function()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.parametrize(("raw", "policy"), [(None, "normal"), ("", "normal"), ("normal", "normal"), ("idle", "idle"), (" IDLE ", "idle")])
def test_the_worker_cpu_policy_is_normal_unless_idle_is_asked(monkeypatch, raw, policy):
    if raw is None:
        monkeypatch.delenv("WORKER_CPU_POLICY", raising=False)
    else:
        monkeypatch.setenv("WORKER_CPU_POLICY", raw)
    assert env.worker_cpu_policy() == policy


@pytest.mark.parametrize("raw", ["lowest", "nice", "batch", "0"])
def test_a_bad_worker_cpu_policy_stops_the_process_naming_the_variable(monkeypatch, capsys, raw):
    monkeypatch.setenv("WORKER_CPU_POLICY", raw)
    with pytest.raises(env.ConfigError) as raised:
        env.worker_cpu_policy()
    assert raised.value.code == 2
    assert str(raised.value) == f"WORKER_CPU_POLICY={raw!r} must be one of normal, idle"
    assert "WORKER_CPU_POLICY" in capsys.readouterr().err


def test_a_job_thread_takes_sched_idle_once_under_idle_and_nothing_under_normal():
    def run(policy: str) -> tuple[bool, bool, bool]:
        before = cpu_policy.pending(policy)
        cpu_policy.enter_job_thread(policy)
        return before, cpu_policy.is_idle(), cpu_policy.pending(policy)

    assert in_a_thread(lambda: run("normal")) == (False, False, False)
    assert in_a_thread(lambda: run("idle")) == (True, True, False)
    assert not cpu_policy.is_idle()  # the thread's policy, not the process's


def test_a_thread_that_must_not_starve_leaves_the_idle_policy_it_inherited():
    # given a job thread at SCHED_IDLE that starts another thread (it inherits SCHED_IDLE)
    def job_thread() -> tuple[bool, bool, str]:
        cpu_policy.enter_job_thread("idle")
        return in_a_thread(lambda: (cpu_policy.is_idle(), keep_normal_then_idle(), thread_name()))

    def keep_normal_then_idle() -> bool:
        cpu_policy.keep_normal("heartbeat")  # as the heartbeat's thread does first
        return cpu_policy.is_idle()

    # then that thread starts idle, and is normal (and named for the kernel) after keep_normal
    assert in_a_thread(job_thread) == (True, False, "cv-heartbeat")


def thread_name() -> str:
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as comm:
        return comm.read().strip()


def test_the_heartbeat_and_deadlines_threads_can_be_started_before_any_job():
    # the signal handler starts them before the job thread lowers its policy (a thread inherits it)
    from jobs.engine.deadlines import Deadlines
    from jobs.engine.runner import Heartbeat

    heartbeat, deadlines = Heartbeat(), Deadlines()
    heartbeat.start()
    deadlines.start()
    assert heartbeat._thread is not None and heartbeat._thread.is_alive()
    assert deadlines._thread is not None and deadlines._thread.is_alive()
    assert os.getpid() == heartbeat._pid


def test_only_an_idle_worker_leading_its_own_session_lowers_its_autogroup():
    def nice() -> str:
        # "/autogroup-N nice K"; empty (or absent) where the kernel runs without autogroup (CI's)
        try:
            with open("/proc/self/autogroup") as group:
                return group.read().strip()
        except OSError:
            return ""

    before = nice()
    # normal: never; idle in a process that does not lead its session (pytest's): never
    assert cpu_policy.lower_own_autogroup("normal") is False
    if os.getsid(0) != os.getpid():
        assert cpu_policy.lower_own_autogroup("idle") is False
    assert nice() == before  # this session's group untouched


def test_the_idle_cgroup_applies_only_beside_a_v1_cpu_controller_with_cpu_idle_and_from_its_root(tmp_path):
    mount, own = tmp_path / "cpu", tmp_path / "cgroup"
    mount.mkdir()
    own.write_text("9:name=systemd:/\n4:cpu,cpuacct:/\n1:pids:/\n")
    # no cpu.idle (an older kernel): none
    assert cpu_policy.idle_cgroup(str(mount), str(own)) is None
    (mount / "cpu.idle").write_text("0\n")
    # this process in the root cpu cgroup: the shared idle cgroup beside it
    assert cpu_policy.idle_cgroup(str(mount), str(own)) == str(mount / cpu_policy.IDLE_CGROUP)
    # inside a container's or a unit's cgroup: none (the operator's setting decides)
    own.write_text("4:cpu,cpuacct:/system.slice/worker.service\n")
    assert cpu_policy.idle_cgroup(str(mount), str(own)) is None


def test_a_thread_is_leaving_once_a_zombie_exiting_or_killed_and_not_before():
    assert cpu_policy.leaving("Z", 0, 0) and cpu_policy.leaving("X", 0, 0)
    assert cpu_policy.leaving("R", cpu_policy.PF_EXITING, 0)  # in the kernel's exit
    assert cpu_policy.leaving("R", 0, cpu_policy.SIGKILL_BIT)  # killed, not yet scheduled to die
    assert not cpu_policy.leaving("S", 0x400040, 1 << 14)  # a live thread with a SIGTERM pending
    assert not cpu_policy.leaving("R", 0, 0)


def a_zombie():
    """A child process killed and not yet reaped: its thread is listed, and leaving."""
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.send_signal(signal.SIGKILL)
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    return child


def test_the_idle_cgroup_is_removed_once_threads_already_leaving_have_left_however_long_they_take(tmp_path):
    """The defect: a killed idle worker's job thread, starved of CPU at the idle priority, stayed
    listed in the cgroup for seconds after the last remover's patience ran out, and the suite left
    an empty conveyor-idle behind. A directory stands in for the cgroup: its `tasks` lists a
    zombie's thread until the kernel would drop it (here: the file removed after 0.6 s)."""
    import threading

    group = tmp_path / "conveyor-idle"
    group.mkdir()
    zombie = a_zombie()
    (group / "tasks").write_text(f"{zombie.pid}\n")
    threading.Timer(0.6, (group / "tasks").unlink).start()
    try:
        # when a remover with 0.1 s of patience finds only that leaving thread, then it waits for it
        assert cpu_policy.remove_idle_cgroup(str(group), patience=0.1) is True
        assert not group.exists()
    finally:
        zombie.wait()


def test_the_idle_cgroup_stays_while_a_running_thread_is_in_it_and_the_remover_says_so(tmp_path, caplog):
    group = tmp_path / "conveyor-idle"
    group.mkdir()
    (group / "tasks").write_text(f"{os.getpid()}\n")  # this live process: another worker, say
    started = time.monotonic()
    with caplog.at_level("INFO", logger="conveyor.runner"):
        assert cpu_policy.remove_idle_cgroup(str(group), patience=0.2) is False
    assert time.monotonic() - started < 2  # its patience, not the leaving threads' 30 s
    assert group.exists()
    assert f"threads {os.getpid()} still running in it" in caplog.text


def cpu_cgroup() -> str:
    """The calling thread's cgroup of the cpu controller ("/" for the root)."""
    with open("/proc/thread-self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "cpu" in controllers.split(","):
                return path
    return ""


def test_a_thread_that_must_not_starve_leaves_the_idle_cgroup_it_inherited():
    if cpu_policy.idle_cgroup() is None:
        pytest.skip("no cgroup v1 cpu controller with cpu.idle here (the idle cgroup does not apply)")

    # given a job thread in the idle cgroup that starts another thread (it starts in that cgroup too)
    def job_thread() -> tuple[str, str, str]:
        cpu_policy.enter_job_thread("idle")
        return cpu_cgroup(), *in_a_thread(lambda: (cpu_cgroup(), keep_normal_then_cgroup()))

    def keep_normal_then_cgroup() -> str:
        cpu_policy.keep_normal("deadlines")  # as the deadlines' and the heartbeat's threads do first
        return cpu_cgroup()

    # then that thread leaves it with keep_normal: the idle group would still give it only idle cores
    group = "/" + cpu_policy.IDLE_CGROUP
    assert in_a_thread(job_thread) == (group, group, "/")


def _in_a_session_of_its_own(policy: str, enabled: str, group: str) -> bool:
    """favour_own_autogroup's answer in a forked child that leads a new session (as `manage.py
    start` makes a server's)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        os.setsid()
        answer = cpu_policy.favour_own_autogroup(policy, enabled, group)
        os.write(write, b"1" if answer else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    return answer == b"1"


def test_an_idle_policy_server_leading_its_session_gives_its_autogroup_more_weight_and_fails_quietly(tmp_path):
    enabled, group = tmp_path / "enabled", tmp_path / "autogroup"
    enabled.write_text("1\n")
    group.write_text("")
    assert _in_a_session_of_its_own("idle", str(enabled), str(group)) is True
    assert group.read_text() == str(cpu_policy.SERVER_AUTOGROUP_NICE) == "-10"
    group.write_text("")
    assert _in_a_session_of_its_own("normal", str(enabled), str(group)) is False  # only under idle
    enabled.write_text("0\n")
    assert _in_a_session_of_its_own("idle", str(enabled), str(group)) is False  # autogroup off
    assert group.read_text() == ""
    enabled.write_text("1\n")
    # not permitted (here a folder in the file's place: an OSError, as EPERM would be): False, no raise
    assert _in_a_session_of_its_own("idle", str(enabled), str(tmp_path)) is False
