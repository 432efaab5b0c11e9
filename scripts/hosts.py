#!/usr/bin/env python3
"""Conveyor across hosts on one machine (network namespaces): the chaos run (issue 15).

    python scripts/hosts.py chaos            2,000 chains, 500 keyed events, 500 atomic jobs (+ 500 twins) under faults (make chaos)
    python scripts/hosts.py chaos --small    the suite's size: 100 chains, 36 events, 36 atomic jobs (+ 36 twins), 3 kills, every fault
    python scripts/hosts.py chaos --json F   also write the summary as JSON to F
    python scripts/hosts.py check            can this machine make namespaces? (one line; exit 0 or 3)

Needs root, `ip` (iproute2) and Debian's postgresql-15, redis-server and redis-sentinel (installed
with apt-get when missing). The hosts, their processes and their network are removed at the end,
even on failure. See hosts/chaos.py for what the run does and what its summary counts.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hosts import chaos, harness

#: Every fault of the full run, closer together (the load is paced over the faults' window): the
#: cut still outlasts a lease (3 s) twice, so w1's slow jobs are reaped and run again.
SMALL = {"chains": 100, "events": 36, "keys": 6, "atomic": 36, "kills": 3, "spacing": 2.0, "cut_seconds": 6.0, "drain_timeout": 120.0}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hosts.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("chaos", "check"))
    parser.add_argument("--small", action="store_true", help="the suite's size")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the folder of logs and data")
    for f in fields(chaos.Plan):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    args = parser.parse_args(argv)
    # SIGTERM (a test's timeout, a CI cancel) unwinds like Ctrl-C: the hosts are torn down on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    reason = harness.unavailable()
    if reason:
        print(f"hosts: cannot run here: {reason}")
        return 3
    if args.command == "check":
        print("hosts: network namespaces available")
        return 0
    plan = chaos.Plan(**(SMALL if args.small else {}))
    for f in fields(chaos.Plan):
        value = getattr(args, f.name)
        if value is not None:
            setattr(plan, f.name, value)
    folder = Path(tempfile.mkdtemp(prefix="cvy-chaos-", dir="/tmp"))
    try:
        summary = chaos.chaos(plan, folder, log=lambda line: print(line, flush=True))
    except BaseException:
        print(f"hosts: failed; logs kept in {folder}", flush=True)
        raise
    if args.keep:
        print(f"hosts: logs in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    print(chaos.report(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    ok = (summary["lost"] == summary["run_twice"] == summary["left_running"] == summary["out_of_order"]
          == summary["atomic_written_twice"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
