"""`manage.py status`: the instances running on this machine and the jobs each worker runs."""
from __future__ import annotations

import json

import psutil
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db.models import Count

from jobs.models import Job, Status
from project.supervisor import describe


class Command(BaseCommand):
    help = "List running instances (role, pid, queues, node name) and the jobs each worker is running."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: object, **options: object) -> None:
        running = list(Job.objects.filter(status=Status.RUNNING).values("id", "type", "worker"))
        instances = []
        for path in sorted((settings.DATA_DIR / "run").glob("supervisor-*.json")):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not psutil.pid_exists(state["supervisor"]):
                path.unlink(missing_ok=True)  # a supervisor that was killed left it behind
                continue
            for child in state["children"]:
                node = child.get("node")
                child["alive"] = bool(child.get("pid")) and psutil.pid_exists(child["pid"])
                child["supervisor"] = state["supervisor"]
                child["jobs"] = [j["id"] for j in running if node and j["worker"].startswith(f"{node}/")]
                instances.append(child)
        queues = queue_states()
        if options["json"]:
            self.stdout.write(json.dumps({"instances": instances, "running_jobs": len(running), "queues": queues}, indent=2))
            return
        if not instances:
            self.stdout.write("no Conveyor supervisor is running on this machine")
        for child in instances:
            state = "up" if child["alive"] else "down"
            jobs = f"  running jobs {child['jobs']}" if child.get("node") else ""
            self.stdout.write(f"{child['name']:<18} pid {child['pid']:<8} {state:<5} {describe(child)}{jobs}")
        by_worker = Job.objects.filter(status=Status.RUNNING).values("worker").annotate(n=Count("id")).order_by("worker")
        self.stdout.write(f"running jobs, all machines: {len(running)}")
        for row in by_worker:
            self.stdout.write(f"  {row['worker']}: {row['n']}")
        self.write_queues(queues)

    def write_queues(self, queues: list[dict]) -> None:
        """Every queue of every machine: jobs waiting, the oldest wait, its consumers, a pause; a
        queue with jobs waiting and no consumer is an alarm (jobs.engine.why.queues)."""
        self.stdout.write("queues, all machines:")
        for q in queues:
            consumers = "?" if q["consumers"] is None else q["consumers"]
            oldest = f", oldest waited {q['oldest_waiting_seconds']:.0f} s" if q["oldest_waiting_seconds"] is not None else ""
            paused = f"  PAUSED{': ' + q['paused'] if q['paused'] else ''}" if q["paused"] is not None else ""
            held = q.get("held_by_pause", 0)
            if held:  # they wait in the database for the resume: no worker may take them
                paused += f"  held by a pause {held}" + ("" if q["paused"] is not None else " (a type of this queue is paused)")
            line = f"  {q['queue']:<18} waiting {q['waiting']:<6} consumers {consumers}{oldest}{paused}"
            self.stdout.write(line)
            if q["alarm"]:
                self.stdout.write(self.style.ERROR(f"  ALARM: no worker consumes queue {q['queue']!r} and {q['waiting']} job(s) wait: "
                                                   f"start one (manage.py start --queues {q['queue']})"))


def queue_states() -> list[dict]:
    """jobs.engine.why.queues with each queue's pause reason ("" when paused without one; None: not paused)."""
    from jobs.engine import pauses, why

    paused = {p.name: p.reason for p in pauses.paused() if p.kind == "queue"}
    return [{**q, "paused": paused.get(q["queue"])} for q in why.queues()]
