"""Errors a user can cause through their data (defined in the project-wide family)."""

from __future__ import annotations

from grpo.errors import ChatTemplateError, DatasetError

__all__ = ["ChatTemplateError", "DatasetError"]
