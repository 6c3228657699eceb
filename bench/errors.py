"""The one base class of bad input. Every error the user can cause (an unknown preset or dataset, a bad setting, an
unreadable file, a family that cannot be loaded) derives from UserError: the CLI prints its one-line message and
exits with status 2, before anything is written. Imports nothing, so the CLI can catch it without loading torch."""


class UserError(ValueError):
    """Bad input from the user: printed as one line, exit status 2."""
