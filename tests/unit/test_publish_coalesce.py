"""jobs.engine.coalesce.Coalescer: which committed jobs' messages go out at once, which wait and
go out together, in one process (a fake clock; the flushing thread on the real one)."""
from __future__ import annotations

import os
import threading
import time

from jobs.engine.coalesce import Coalescer

WINDOW = 0.005


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def kind(message: tuple[str, int]) -> str:
    return message[0]


def coalescer(clock: Clock | None = None) -> tuple[Coalescer, list[tuple[object, list]]]:
    sent: list[tuple[object, list]] = []
    return Coalescer(lambda batch, key: sent.append((key, list(batch))), clock or Clock()), sent


def test_an_idle_process_sends_at_once_and_holds_the_next_of_the_kind_until_the_window_ends():
    # given a process that sent nothing yet
    clock = Clock()
    c, sent = coalescer(clock)

    # when a job is committed, then its message goes out at once
    assert c.add([("a", 1)], kind, WINDOW, 8) == [("a", 1)]

    # when two more of its kind are committed within the window, then they wait
    clock.now += 0.001
    assert c.add([("a", 2)], kind, WINDOW, 8) == []
    clock.now += 0.001
    assert c.add([("a", 3)], kind, WINDOW, 8) == []
    assert c.waiting() == 2 and c.next_deadline() == 100.0 + WINDOW

    # and at the window's end they go out together, in one message
    clock.now = 100.0 + WINDOW
    assert c.due(clock.now) == [("a", [("a", 2), ("a", 3)])]
    assert sent == []  # due() only takes them: the thread sends


def test_a_job_after_a_quiet_window_goes_out_at_once_again():
    clock = Clock()
    c, _ = coalescer(clock)
    c.add([("a", 1)], kind, WINDOW, 8)
    clock.now += WINDOW * 1.2
    assert c.add([("a", 2)], kind, WINDOW, 8) == [("a", 2)]


def test_kinds_never_share_a_message_nor_hold_each_other_back():
    clock = Clock()
    c, _ = coalescer(clock)
    assert c.add([("a", 1), ("b", 2)], kind, WINDOW, 8) == [("a", 1), ("b", 2)]
    clock.now += 0.001
    assert c.add([("a", 3), ("b", 4)], kind, WINDOW, 8) == []
    assert sorted(c.due(100.0 + WINDOW)) == [("a", [("a", 3)]), ("b", [("b", 4)])]


def test_waiting_ids_that_fill_a_message_go_out_at_once_and_the_next_wait_a_window_from_then():
    # given a cap of 3 ids per coalesced message
    clock = Clock()
    c, sent = coalescer(clock)
    c.add([("a", 0)], kind, WINDOW, 3)

    # when three more are committed within the window, then they go out as one message
    for i in (1, 2, 3):
        clock.now += 0.001
        c.add([("a", i)], kind, WINDOW, 3)
    assert sent == [("a", [("a", 1), ("a", 2), ("a", 3)])] and c.waiting() == 0

    # and the next one waits for a window from that send
    assert c.add([("a", 4)], kind, WINDOW, 3) == []
    assert c.next_deadline() == clock.now + WINDOW


def test_coalescing_off_sends_everything_at_once():
    c, _ = coalescer()
    assert c.add([("a", 1), ("a", 2)], kind, 0.0, 8) == [("a", 1), ("a", 2)]
    assert c.waiting() == 0


def test_the_thread_sends_what_waits_when_its_window_ends_and_flush_sends_the_rest():
    # given the real clock and a 20 ms window
    c, sent = coalescer(None)
    c._clock = time.monotonic
    done = threading.Event()
    c._send = lambda batch, key: (sent.append((key, list(batch))), done.set())

    # when a job goes out and the next two are committed at once after it
    c.add([("a", 1)], kind, 0.02, 8)
    c.add([("a", 2)], kind, 0.02, 8)
    c.add([("a", 3)], kind, 0.02, 8)

    # then the thread sends them together, about a window later
    assert done.wait(2.0)
    assert sent == [("a", [("a", 2), ("a", 3)])]

    # and at exit, what still waits (within a window of that send) is sent at once
    c.add([("a", 4)], kind, 10.0, 8)
    c.add([("a", 5)], kind, 10.0, 8)
    assert c.flush() == 2 and sent[-1] == ("a", [("a", 4), ("a", 5)])


def test_a_forked_child_starts_empty_and_leaves_the_parents_waiting_ids_to_the_parent():
    # given a process with an id waiting
    clock = Clock()
    c, sent = coalescer(clock)
    c.add([("a", 1)], kind, 10.0, 8)
    c.add([("a", 2)], kind, 10.0, 8)
    assert c.waiting() == 1

    # when it forks, then the child has nothing waiting and sends nothing at its exit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, f"{c.waiting()} {c.flush()}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"0 0"

    # and the parent still has its own
    assert c.waiting() == 1
