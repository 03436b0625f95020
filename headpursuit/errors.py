"""Errors shared by the library and the application shell."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""
