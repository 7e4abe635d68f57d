"""Errors a user causes and can fix. launch.py prints them as one message, without a
traceback, and exits with code 2; anything else is a bug and keeps its traceback."""


class InputError(ValueError):
  """A bad config value, input file or workdir; the message names it and the fix."""


class ConfigError(InputError):
  """The config cannot run; the message lists every problem with the key to fix."""
