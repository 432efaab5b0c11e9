"""The error a caller's bad input raises anywhere in Conveyor: the HTTP API answers it with 400.

`errors` maps each wrong field, as the client named it (`input.width`, `steps.1.type`, `key`), to
its message. Jobs raise `jobs.InvalidJob` and the event bus `subscribers.InvalidEvent`, both kinds
of this one.
"""
from __future__ import annotations


class BadInput(ValueError):
    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class TooLarge(BadInput):
    """A value over a stated size limit (a job's input over CONVEYOR_MAX_INPUT_BYTES): 413."""


class Conflict(BadInput):
    """A request that contradicts what is already recorded: the HTTP API answers 409."""
