"""The package's error types: each names the file, tensor or option at fault."""


class ConfigError(ValueError):
    """A config.json or generation option that is missing, malformed or not supported."""


class CheckpointError(ValueError):
    """A weights file that is missing, malformed, or does not fit the config."""
