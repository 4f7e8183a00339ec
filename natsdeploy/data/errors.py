"""The one error type of `natsdeploy.data` (kept free of torch so the CLI and generator import it cheaply)."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset that cannot be read or written (one-line message: path/field, value, expectation)."""
