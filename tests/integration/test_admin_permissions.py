"""Issue 22: every admin action that changes state (retry, cancel, replay) needs the jobs.operate
permission, not only view; the operations page needs jobs.view_job and shows each section and
button only with its own permission. Django's test client, real PostgreSQL."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from jobs.models import Job, Status
from subscribers.models import Delivery, Event

pytestmark = pytest.mark.django_db

VIEW = ["jobs.view_job", "jobs.view_chain", "subscribers.view_event", "subscribers.view_delivery"]


def _staff(name: str, permissions: list[str]) -> Client:
    user = get_user_model().objects.create_user(username=name, email=name, password="a-long-password", is_staff=True)
    for dotted in permissions:
        app, codename = dotted.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> Client:
    return _staff("viewer@example.com", VIEW)


@pytest.fixture
def operator() -> Client:
    return _staff("operator@example.com", [*VIEW, "jobs.operate"])


def _job(**fields: object) -> Job:
    return Job.objects.create(**{"type": "examples.echo", "queue": "default", "status": Status.PENDING, **fields})


def _dead() -> Job:
    return _job(status=Status.DEAD, attempt=1, max_attempts=1, finished_at=timezone.now(),
                error="Traceback (most recent call last):\nRuntimeError: secret-ish detail")


def _action(client: Client, path: str, action: str, pk: int):
    return client.post(path, {"action": action, "_selected_action": [pk], "index": 0}, follow=True)


def _event_with_a_delivery() -> tuple[Event, Delivery]:
    event = Event.objects.create(name="order.placed", key="order-1", data={"order": 1})
    delivery = Delivery.objects.create(event=event, subscriber="shop.send-confirmation", key="order-1",
                                       job=_job(status=Status.SUCCEEDED), released_at=timezone.now())
    return event, delivery


def test_view_only_staff_cannot_replay_events_or_deliveries(viewer):
    event, delivery = _event_with_a_delivery()
    jobs = Job.objects.count()
    assert viewer.get(f"/admin/subscribers/event/{event.pk}/change/").status_code == 200  # it may look
    listing = viewer.get("/admin/subscribers/event/").content.decode()
    assert "replay_events" not in listing
    assert "replay_deliveries" not in viewer.get("/admin/subscribers/delivery/").content.decode()

    _action(viewer, "/admin/subscribers/event/", "replay_events", event.pk)
    _action(viewer, "/admin/subscribers/delivery/", "replay_deliveries", delivery.pk)
    delivery.refresh_from_db()
    assert delivery.replays == 0 and Job.objects.count() == jobs  # no subscriber runs again


def test_a_refused_admin_page_is_one_log_line_without_a_traceback(viewer, caplog):
    # given a staff user who may view jobs but not add them (the admin links no add page; a
    # bookmark or a typed URL still reaches it)
    # when it opens the add page
    with caplog.at_level("WARNING", logger="django.request"):
        assert viewer.get("/admin/jobs/job/add/").status_code == 403
    # then the server's log says so in one line, with no traceback (Django attaches one)
    refused = [r for r in caplog.records if r.name == "django.request"]
    assert [r.getMessage() for r in refused] == ["Forbidden (Permission denied): /admin/jobs/job/add/"]
    assert refused[0].exc_info is None and "Traceback" not in caplog.text


def test_view_only_staff_cannot_retry_or_cancel(viewer):
    dead, pending = _dead(), _job()
    assert "retry_jobs" not in viewer.get("/admin/jobs/job/").content.decode()
    _action(viewer, "/admin/jobs/job/", "retry_jobs", dead.pk)
    _action(viewer, "/admin/jobs/job/", "cancel_jobs", pending.pk)
    assert viewer.post(f"/admin/operations/jobs/{dead.pk}/retry/").status_code == 403
    assert viewer.post(f"/admin/operations/jobs/{pending.pk}/cancel/").status_code == 403
    page = viewer.get(f"/admin/jobs/job/{dead.pk}/change/").content.decode()
    assert 'id="job-retry"' not in page
    dead.refresh_from_db()
    pending.refresh_from_db()
    assert (dead.status, pending.status) == (Status.DEAD, Status.PENDING)


def test_an_operator_replays_retries_and_cancels(operator):
    event, delivery = _event_with_a_delivery()
    assert "replay_events" in operator.get("/admin/subscribers/event/").content.decode()
    response = _action(operator, "/admin/subscribers/delivery/", "replay_deliveries", delivery.pk)
    assert [str(m) for m in response.context["messages"]] == ["1 delivery(ies) replayed"]
    delivery.refresh_from_db()
    assert delivery.replays == 1
    response = _action(operator, "/admin/subscribers/event/", "replay_events", event.pk)
    assert "replayed" in str(list(response.context["messages"])[0])

    dead, pending = _dead(), _job()
    _action(operator, "/admin/jobs/job/", "retry_jobs", dead.pk)
    assert operator.post(f"/admin/operations/jobs/{pending.pk}/cancel/").status_code == 302
    dead.refresh_from_db()
    pending.refresh_from_db()
    assert (dead.status, pending.status) == (Status.PENDING, Status.CANCELLED)


def test_operations_page_needs_view_permission_and_shows_retry_only_to_operators(viewer, operator):
    dead = _dead()
    _event_with_a_delivery()
    nobody = _staff("staff-only@example.com", [])
    for path in ("/admin/operations/", "/admin/operations/fragment/"):
        refused = nobody.get(path)
        assert refused.status_code == 403 and b"secret-ish detail" not in refused.content

    page = viewer.get("/admin/operations/fragment/").content.decode()
    assert f'data-job="{dead.pk}"' in page and "secret-ish detail" in page
    assert "operations-retry" not in page and f"/jobs/{dead.pk}/retry/" not in page
    assert 'id="ops-chains"' in page and 'id="ops-events"' in page
    assert f"/admin/operations/jobs/{dead.pk}/retry/" in operator.get("/admin/operations/fragment/").content.decode()

    jobs_only = _staff("jobs-only@example.com", ["jobs.view_job"])
    page = jobs_only.get("/admin/operations/").content.decode()
    assert 'id="ops-dead"' in page and 'id="ops-chains"' not in page and 'id="ops-events"' not in page


def test_schedule_actions_need_change_or_operate_permission():
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(name="conveyor:demo", task="conveyor.tick", interval=every, enabled=True)
    viewer = _staff("schedules-viewer@example.com", ["django_celery_beat.view_periodictask"])
    listing = viewer.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert listing and not any(name in listing for name in ("run_tasks", "disable_tasks", "enable_tasks", "toggle_tasks"))
    _action(viewer, "/admin/django_celery_beat/periodictask/", "disable_tasks", task.pk)
    task.refresh_from_db()
    assert task.enabled

    editor = _staff("schedules-editor@example.com", ["django_celery_beat.view_periodictask", "django_celery_beat.change_periodictask"])
    listing = editor.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert "disable_tasks" in listing and "run_tasks" not in listing
    _action(editor, "/admin/django_celery_beat/periodictask/", "disable_tasks", task.pk)
    task.refresh_from_db()
    assert not task.enabled

    operator = _staff("schedules-operator@example.com", ["django_celery_beat.view_periodictask", "jobs.operate"])
    assert "run_tasks" in operator.get("/admin/django_celery_beat/periodictask/").content.decode()


@pytest.mark.parametrize("path", [
    "/admin/jobs/job/?status=%00", "/admin/jobs/job/?type=x%00y", "/admin/jobs/job/?queue=%00", "/admin/jobs/chain/?status=%00",
    "/admin/subscribers/event/?name=%00", "/admin/subscribers/delivery/?subscriber=%00", "/admin/jobs/pause/?kind=%00",
    "/admin/axes/accessattempt/?ip_address=%00", "/admin/django_celery_beat/periodictask/?task=%00", "/admin/jobs/job/?%00=1",
])
def test_a_nul_in_an_admin_query_parameter_is_a_400_naming_it(admin_client, path):
    # A list filter or lookup with a NUL (which PostgreSQL cannot compare) failed with a 500
    response = admin_client.get(path)
    assert response.status_code == 400, (response.status_code, response.content[:300])
    name = path.split("?")[1].split("=")[0].replace("%00", "\\u0000")
    assert f"the query parameter '{name}' contains the NUL character" in response.content.decode()
    # and the same list without it answers
    assert admin_client.get(path.split("?")[0]).status_code == 200
