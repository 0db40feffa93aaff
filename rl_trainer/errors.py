"""The one exception type for mistakes a user can fix (config, data, model path, reward function).

Anything raised as `UserError` is reported by the CLI as a single line (its message), which must name
the culprit (key, file, column, function) and the fix. Every other exception is a bug and keeps its
full traceback.
"""


class UserError(Exception):
    """A problem with the user's input, described in one line with the fix."""


class WorkerGroupError(RuntimeError):
    """A Ray worker died or vanished mid-run; the message names the worker group and rank."""
