"""The one base class of bad input. Every error the user can cause (an unknown preset or dataset, a bad setting, an
unreadable file, a family that cannot be loaded) derives from UserError: the CLI prints its one-line message and
exits with status 2, before anything is written. Imports nothing, so the CLI can catch it without loading torch."""


class UserError(ValueError):
    """Bad input from the user: printed as one line, exit status 2."""


class WorkerLost(RuntimeError):
    """A worker process of `gvd run` or `gvd study` ended without sending its job's outcome (killed, out of memory):
    the jobs stop, what finished is kept; the CLI prints its one line, exit status 1."""
