#!/usr/bin/env python
"""Django's command-line utility for Conveyor."""
import os
import sys

# What needs no server: Django's help and version.
NO_SERVERS = {"help", "--help", "-h", "version", "--version"}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if len(sys.argv) > 1 and sys.argv[1] not in NO_SERVERS:
        # The embedded PostgreSQL and Redis, for the variables that name no server (development);
        # their URLs are exported for every process this command spawns.
        from project import embedded

        embedded.start()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
