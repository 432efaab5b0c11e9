"""Progress of a long command, on stderr: `retry: 1,200/5,000 (24%)`, at most once a second and
at the end, so a person waiting sees where it is and a log is not flooded."""
from __future__ import annotations

import time
from typing import TextIO


class Progress:
    def __init__(self, out: TextIO, label: str, every: float = 1.0) -> None:
        self.out, self.label, self.every = out, label, every
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        percent = f" ({done * 100 // total}%)" if total else ""
        self.out.write(f"{self.label}: {done:,}/{total:,}{percent}\n")
