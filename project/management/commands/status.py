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
        if options["json"]:
            self.stdout.write(json.dumps({"instances": instances, "running_jobs": len(running)}, indent=2))
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
