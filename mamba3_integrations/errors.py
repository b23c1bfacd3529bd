"""Exceptions raised by mamba3-integrations: one base class, one subclass per area."""


class Mamba3IntegrationsError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(Mamba3IntegrationsError, ValueError):
    """A model configuration is invalid (unknown key, bad value, unsupported option)."""


class CheckpointError(Mamba3IntegrationsError):
    """A checkpoint folder or its tensors do not match the model it claims to be."""


class InputError(Mamba3IntegrationsError, ValueError):
    """A caller passed input of the wrong shape, type or content."""


class StoreError(Mamba3IntegrationsError):
    """The vector store failed: connection lost, schema mismatch, bad filter, ..."""
