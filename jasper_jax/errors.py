"""The one error type a user can fix, and the exit codes of every `jasper-jax` sub-command.

A module raises `UserError` (or a subclass) with a message that names the input, what was expected and
what to do; `jasper_jax.cli.main` is the one place that turns it into `jasper-jax COMMAND: message` on
stderr and the error's exit code, so no sub-command shows a traceback for bad input.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NONFINITE = 0, 1, 2, 3
# training: preempted (SIGTERM), a checkpoint saved at the agreed step: rerun the same command (EX_TEMPFAIL)
EXIT_REQUEUE = 75
# training: no step completed for watchdog.hang_timeout_s (a lost peer, a collective that never completes)
EXIT_HANG = 4


class UserError(Exception):
    """A problem the user can fix (the message says what); `exit_code` is what the command returns."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code

    def __str__(self) -> str:  # the message as given, also for subclasses of KeyError (which quote it)
        return str(self.args[0]) if self.args else ""
