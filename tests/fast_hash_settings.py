"""The project's settings with a cheap password hasher, for a live server that a fuzzer sends
hundreds of logins: each refused login still hashes once (Django's guard against telling unknown
emails by time), and PBKDF2's million rounds would make the run a measure of the CPU. What such a
test proves (every answer is one the document names, in its shape; the lockout's 429s) does not
depend on the hasher. Chosen by DJANGO_SETTINGS_MODULE in the server's environment."""
from __future__ import annotations

from project.settings import *  # noqa: F403 - the project's settings, every one

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
