"""API tokens: random bearer tokens of which only a keyed hash is stored."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiToken(models.Model):
    """A bearer token for /api/: only its keyed hash (TOKEN_HASH_KEY) is stored, with its scopes
    (api.scopes: space-separated, e.g. `events:emit:order.placed` or `jobs:read jobs:write`)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    scope = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    #: None: never expires.
    expires_at = models.DateTimeField(null=True, blank=True)
    #: Updated at most once a minute per token (one UPDATE, not one per request).
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The table the jobs app created first; only the model moved (jobs 0004, api 0001).
        db_table = "jobs_apitoken"
        verbose_name = "API token"
        verbose_name_plural = "API tokens"

    def __str__(self) -> str:
        return f"token {self.pk} of {self.user}"

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()
