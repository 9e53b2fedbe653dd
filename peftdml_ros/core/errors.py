"""Exceptions of the core. Each message says what is wrong and what to do about it."""

from __future__ import annotations


class PeftdmlError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PeftdmlError):
    """A configuration value (YAML, parameter, model config) is missing or out of range."""


class InputDataError(PeftdmlError):
    """A sensor message or data file cannot be used (malformed, truncated, unsupported)."""


class ModelArtifactError(PeftdmlError):
    """A checkpoint, ONNX file or engine does not match what the code expects."""


class BackendUnavailableError(PeftdmlError):
    """An inference backend cannot run here (library missing, no GPU)."""
