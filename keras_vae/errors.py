"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake in what the user asked for: bad flags, missing or corrupt data.

    The command line turns it into a one-paragraph message and exit status 2;
    library callers can catch it like any other exception.
    """


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; nothing was exported."""
