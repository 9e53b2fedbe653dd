"""Errors of the synthetic dataset generator."""

from __future__ import annotations

from peftdml_ros.core.errors import ConfigError


class SynthConfigError(ConfigError):
    """A generator option (preset, scene count, degradation spec) is invalid."""
