"""The error type of `natsdeploy.data`, re-exported from `natsdeploy.errors` (torch-free, cheap to import)."""

from __future__ import annotations

from natsdeploy.errors import DatasetError

__all__ = ["DatasetError"]
