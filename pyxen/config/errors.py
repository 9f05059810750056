"""The one exception type the config layer raises for bad user input."""


class ConfigError(ValueError):
    """A config file, spec or option is wrong; str() is the user-facing line."""
