"""A newcomer's first minutes (issue 26), as pure decisions: the commands Conveyor tells a person
to run, the address gunicorn listens at, when JSON is indented, the words of a wrong request,
whether development Flower's HTTP API is open."""
from __future__ import annotations

from api.messages import field_message, invalid_detail, not_found_detail
from api.middleware import wants_pretty
from project.gunicorn_log import listening_line
from project.hints import login_hint, python_command
from project.management.commands.flower import open_api_in_development


def test_the_hint_names_the_venv_python_relative_to_the_folder():
    assert python_command("/src/conveyor/.venv/bin/python", "/src/conveyor", on_path=None) == ".venv/bin/python"


def test_the_hint_says_python_where_that_name_is_this_python_and_the_path_otherwise():
    assert python_command("/usr/bin/python3.11", "/app", on_path="/usr/bin/python3.11") == "python"
    assert python_command("/opt/py/bin/python", "/app", on_path="/usr/bin/python") == "/opt/py/bin/python"


def test_the_login_hint_puts_no_password_on_the_command_line():
    hint = login_hint(".venv/bin/python")
    assert ".venv/bin/python manage.py user --email you@example.com --superuser (asks for the password)" in hint
    assert "--password" not in hint


def test_gunicorn_with_reuse_port_names_the_address_it_listens_at():
    # gunicorn's master binds nothing with --reuse-port: its line had an empty address
    assert listening_line(("", 4242), ["127.0.0.1:8000"], reuse_port=True) == (
        "http://127.0.0.1:8000", "4242; each worker binds it, SO_REUSEPORT"
    )
    # an address gunicorn knows is left as it is
    assert listening_line(("http://127.0.0.1:8000", 4242), ["127.0.0.1:8000"], True) == ("http://127.0.0.1:8000", 4242)


def test_json_is_indented_when_asked_or_when_the_client_prefers_html():
    assert wants_pretty("1", "application/json") and wants_pretty("", None) and wants_pretty("true", None)
    assert not wants_pretty("0", "text/html") and not wants_pretty("false", None)
    assert wants_pretty(None, "text/html")  # a browser
    assert not wants_pretty(None, "application/json")  # curl's */*, a program


def test_an_unknown_type_gets_close_matches_and_the_catalog():
    error = {"type": "union_tag_invalid", "ctx": {"discriminator": "'type'", "tag": "images.resise",
                                                  "expected_tags": "'examples.echo', 'images.resize'"}}
    assert field_message(error) == "unknown job type 'images.resise'; did you mean 'images.resize'? (the job types: GET /api/types)"
    missing = {"type": "union_tag_not_found", "ctx": {"discriminator": "'type'"}}
    assert field_message(missing).startswith("the field `type` is required")
    assert field_message({"type": "missing", "msg": "Field required"}) == "Field required"


def test_one_wrong_field_is_the_detail_several_are_counted():
    assert invalid_detail({"type": "unknown job type 'x'"}) == "unknown job type 'x'"
    assert invalid_detail({"input.width": "too small"}) == "input.width: too small"
    assert invalid_detail({"a": "x", "b": "y"}) == "invalid request: 2 fields are wrong (a, b)"


def test_every_404_says_what_was_not_found_in_lower_case():
    assert not_found_detail("No Job matches the given query.", [12]) == "no job 12"
    assert not_found_detail("no chain 7") == "no chain 7"
    assert not_found_detail("Not Found") == not_found_detail("") == "not found"


def test_development_flower_opens_its_api_on_loopback_without_auth_only():
    assert open_api_in_development({}, production=False)["FLOWER_UNAUTHENTICATED_API"] == "true"
    assert "FLOWER_UNAUTHENTICATED_API" not in open_api_in_development({}, production=True)
    assert "FLOWER_UNAUTHENTICATED_API" not in open_api_in_development({"FLOWER_BASIC_AUTH": "a:b"}, production=False)
    assert "FLOWER_UNAUTHENTICATED_API" not in open_api_in_development({"FLOWER_ADDRESS": "0.0.0.0"}, production=False)
    assert open_api_in_development({"FLOWER_UNAUTHENTICATED_API": "false"}, False)["FLOWER_UNAUTHENTICATED_API"] == "false"
