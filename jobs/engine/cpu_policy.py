"""The CPU policy of the threads that run jobs (WORKER_CPU_POLICY): `normal` or `idle`.

It matters only where workers share a machine (its cores) with servers: CPU-bound jobs then
delay the server's requests. Under `normal` (the default) a job thread is an ordinary process
to the kernel's scheduler; lowering its nice value only lowers its share, and a server process
woken by a request may still wait behind a running job. Under `idle` each thread that runs jobs
switches itself to Linux's SCHED_IDLE once, before its first job: it runs only on a core that
nothing else wants, a woken normal thread preempts it at once, and a core running only idle
threads counts as idle when the kernel places a woken thread.

The risk: a SCHED_IDLE thread starves while normal processes keep the cores busy (a saturated
server). The jobs' leases must not starve with them: the heartbeat's and the deadlines' threads
start before the job thread switches (a new thread inherits its creator's policy, and leaving
SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE), and each asks for the normal policy again when it
starts (`keep_normal`), in case it was created later. The worker's main process (it takes the
messages, the recovery loop) is never switched in the prefork pool: only its pool processes run
jobs.
"""
from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("conveyor.runner")

VARIABLE = "WORKER_CPU_POLICY"  # read and checked by project.env.worker_cpu_policy

_thread = threading.local()


def pending(policy: str) -> bool:
    """Whether the calling thread has yet to take `policy` (it runs a job for the first time)."""
    return policy == "idle" and not getattr(_thread, "done", False)


def enter_job_thread(policy: str) -> None:
    """In a thread about to run its first job: take the policy (SCHED_IDLE under `idle`, and the
    idle cgroup where there is one to take: `enter_idle_cgroup`), once. Start the threads that must
    not starve (the heartbeat) before this."""
    if not pending(policy):
        return
    _thread.done = True
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:
        log.warning("%s=idle: could not switch this job thread to SCHED_IDLE (%s); it stays normal", VARIABLE, exc)
    enter_idle_cgroup()


#: The cgroup (v1 cpu controller, beside the root) the job threads of idle workers share.
IDLE_CGROUP = "conveyor-idle"
CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"


def idle_cgroup(mount: str = CGROUP_V1_CPU, own: str = "/proc/self/cgroup") -> str | None:
    """The idle cgroup's directory for this process's job threads, or None where none applies:
    only with cgroup v1's cpu controller (it moves a single thread: `tasks`) offering `cpu.idle`,
    and only while this process sits in its root cgroup, where Linux's autogroup puts every
    session in a group of its own (inside a container's or a unit's cgroup, the operator's
    setting decides: systemd's CPUWeight=idle)."""
    if not os.path.exists(os.path.join(mount, "cpu.idle")):
        return None
    try:
        with open(own) as lines:
            for line in lines:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpu" in controllers.split(",") and path != "/":
                    return None
    except OSError:
        return None
    return os.path.join(mount, IDLE_CGROUP)


def enter_idle_cgroup(directory: str | None = None) -> bool:
    """Move the calling thread (only it: not the heartbeat) into the idle cgroup, made with
    `cpu.idle` 1 if missing. True when done.

    Why: with autogroup on, the kernel first shares the CPU between groups (one per session:
    the server's processes, each PostgreSQL backend, the worker), and SCHED_IDLE acts only inside
    a group: measured on bench.cluster's split layout, the job threads' SCHED_IDLE alone left the
    server's p99 at 2.3x idle, the same as normal; with autogroup off it was 1.1x. A group whose
    `cpu.idle` is 1 is to the groups beside it what a SCHED_IDLE thread is to its neighbours: any
    woken normal task preempts it at once."""
    directory = directory or idle_cgroup()
    if directory is None:
        return False
    try:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "cpu.idle"), "r+") as idle:
            if idle.read().strip() != "1":
                idle.seek(0)
                idle.write("1")
        with open(os.path.join(directory, "tasks"), "w") as tasks:
            tasks.write(str(threading.get_native_id()))
        return True
    except OSError as exc:
        log.warning("%s=idle: could not move this job thread into %s (%s)", VARIABLE, directory, exc)
        return False


#: How long a remover waits for threads already leaving (killed, or exiting) to leave the idle
#: cgroup: a SCHED_IDLE thread in it gets a core only when nothing else wants one, so on a busy
#: machine its exit (the kernel's work, done at its own priority) took 3 to 6 s, measured under load.
LEAVING_PATIENCE = 30.0

SIGKILL_BIT = 1 << 8  # SIGKILL (9) in /proc's SigPnd/ShdPnd masks
PF_EXITING = 0x4  # the kernel's per-task flag, in /proc/<tid>/stat's 9th field


def leaving(state: str, flags: int, pending: int) -> bool:
    """Whether a thread, read from /proc (its State letter, its stat flags, its pending signals, the
    thread's and its process's ORed), is on its way out: a zombie or dead, exiting, or killed."""
    return state in ("Z", "X") or bool(flags & PF_EXITING) or bool(pending & SIGKILL_BIT)


def _thread_leaving(tid: str) -> bool:
    """`leaving` for a thread id listed in the cgroup's `tasks` (gone from /proc: left)."""
    try:
        with open(f"/proc/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        state, flags = fields[0], int(fields[6])
        pending = 0
        with open(f"/proc/{tid}/status") as status:
            for line in status:
                if line.startswith(("SigPnd:", "ShdPnd:")):
                    pending |= int(line.split()[1], 16)
    except (OSError, IndexError, ValueError):
        return True  # gone (or going) between the listing and the read
    return leaving(state, flags, pending)


def remove_idle_cgroup(directory: str | None = None, patience: float = 3.0, leaving_patience: float = LEAVING_PATIENCE) -> bool:
    """Once a worker has ended: remove the idle cgroup when no thread is left in it. While a thread
    of a live process is in it (another worker's, or this worker's pool still ending), wait up to
    `patience` seconds, then keep it; while only threads already leaving hold it (a killed tree's,
    starved of CPU at the idle priority), wait for them up to `leaving_patience`. True when removed;
    the reason it was kept is logged."""
    directory = directory or idle_cgroup()
    if directory is None or not os.path.isdir(directory):
        return False
    began = time.monotonic()
    while True:
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return False
        except OSError:  # busy: threads still in it
            try:
                with open(os.path.join(directory, "tasks")) as tasks:
                    tids = tasks.read().split()
            except OSError:
                tids = []
            staying = [tid for tid in tids if not _thread_leaving(tid)]
            waited = time.monotonic() - began
            if waited >= (patience if staying else leaving_patience):
                log.info("%s kept after %.1fs: threads %s %s", directory, waited,
                         " ".join(staying or tids), "still running in it" if staying else "still leaving it")
                return False
            time.sleep(0.05)


def is_idle(tid: int = 0) -> bool:
    """Whether a thread (0: the calling one; else a thread id of this or another process) is SCHED_IDLE."""
    return hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(tid) == os.SCHED_IDLE


def keep_normal(name: str) -> None:
    """First thing in a thread that must not starve (the heartbeat, the deadlines): name it for
    the kernel (`cv-<name>` in /proc/<pid>/task/<tid>/comm, `top -H`), and leave SCHED_IDLE if it
    was created by a job thread that had taken it (and its idle cgroup, which the new thread
    inherited too: leave_idle_cgroup). Root may; others need RLIMIT_NICE (logged)."""
    _name_thread(f"cv-{name}")
    leave_idle_cgroup()
    if not is_idle():
        return
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError as exc:
        log.error("the %s thread was created SCHED_IDLE and cannot leave it (%s): leases may lapse under load", name, exc)


def leave_idle_cgroup(mount: str = CGROUP_V1_CPU, own: str = "/proc/thread-self/cgroup") -> bool:
    """Move the calling thread out of the idle cgroup, into the cpu controller's root, when it is in
    it. True when moved.

    Why: a thread starts in its creator's cgroup. One started by a job thread that had entered the
    idle cgroup (the telemetry flush's timer, a deadlines thread started late) would leave
    SCHED_IDLE in keep_normal and still run only on cores nothing else wants: the group itself is
    idle (`cpu.idle` 1) to the kernel, whatever its threads' policy."""
    try:
        with open(own) as lines:
            inside = any(
                "cpu" in controllers.split(",") and path == "/" + IDLE_CGROUP
                for _, controllers, path in (line.rstrip("\n").split(":", 2) for line in lines)
            )
        if not inside:
            return False
        with open(os.path.join(mount, "tasks"), "w") as tasks:
            tasks.write(str(threading.get_native_id()))
        return True
    except (OSError, ValueError) as exc:
        log.warning("%s=idle: could not move thread %s out of %s (%s)", VARIABLE, threading.get_native_id(), IDLE_CGROUP, exc)
        return False


def _name_thread(name: str) -> None:
    """The calling thread's name as the kernel shows it (15 bytes at most; Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME = 15
    except (OSError, AttributeError):
        pass


AUTOGROUP_NICE = 19  # the lowest weight an autogroup can have (15, against 1024 at nice 0)


def lower_own_autogroup(policy: str) -> bool:
    """Under `idle`, in the worker's main process before its pool starts: when it leads a session
    of its own (`manage.py start` makes each child one) and Linux's autogroup is on, give that
    session's autogroup the lowest weight, so that the worker, as a whole, yields the cores to the
    other sessions (the servers'). True when done.

    Why: outside any cgroup of its own (a bare VM, the root cgroup), the kernel shares the CPU
    between autogroups (one per session) equally, and a thread's policy (SCHED_IDLE, a niceness)
    acts only inside its own. Inside a container's or a unit's cgroup there is no autogroup, and
    this does nothing. The heartbeat and the main process are in that group too: at weight 15 it
    still gets a core now and then, as a SCHED_IDLE thread does (weight 3)."""
    if policy != "idle" or os.getsid(0) != os.getpid():
        return False
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as enabled:
            if enabled.read().strip() != "1":
                return False
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(AUTOGROUP_NICE))
        return True
    except OSError as exc:
        log.warning("WORKER_CPU_POLICY=idle: could not lower this worker's autogroup (%s)", exc)
        return False


#: A server's autogroup under `idle`: weight 9,548 against another session's 1,024 (nice 0).
SERVER_AUTOGROUP_NICE = -10


def favour_own_autogroup(
    policy: str, enabled: str = "/proc/sys/kernel/sched_autogroup_enabled", group: str = "/proc/self/autogroup"
) -> bool:
    """Under `idle`, in a server process (project/asgi.py) whose session was made for the server
    (`manage.py start` makes each child one: gunicorn's master leads it, its workers are in it):
    give that session's autogroup a higher weight than the other sessions'. True when done.

    Why: with the job threads in the idle cgroup, what was left of a request's wait behind them
    (docs/performance.md, "HTTP under load") is the kernel's choice between the server's group and the idle
    group when the server's has just run more than its share; a heavier group comes back to its
    share sooner. Measured (bench.cluster's split layout, the servers of the base and of this side
    by side, requests alternating): the loaded p99 53-76 ms against 125-199 without, the requests
    over 50 ms 4-10 against 10-35 (README). Lowering a niceness needs CAP_SYS_NICE (root on a bare
    VM); without it, in a container or a unit's cgroup (no autogroup there), or in a session that
    is not the server's (a shell's), nothing changes, quietly."""
    if policy != "idle" or os.getsid(0) not in (os.getpid(), os.getppid()):
        return False
    try:
        with open(enabled) as flag:
            if flag.read().strip() != "1":
                return False
        with open(group, "w") as autogroup:
            autogroup.write(str(SERVER_AUTOGROUP_NICE))
        return True
    except OSError as exc:
        log.info("%s=idle: this server's autogroup keeps its weight (%s)", VARIABLE, exc)
        return False
