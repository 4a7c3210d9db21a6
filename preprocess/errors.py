"""The one exception type a clip can fail with, so the runner can record it and move on."""

from __future__ import annotations


class ClipError(Exception):
    """A clip that cannot be turned into a sample.

    Args:
        stage: pipeline stage that gave up (``open``, ``decode``, ``audio``, ``face``,
            ``length``, ``fit``, ``features``, ``encode``).
        reason: one line for a person: what is wrong and, where it helps, what to do.
    """

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


class ConfigError(Exception):
    """A bad configuration or missing input root: reported as one line, no traceback."""
