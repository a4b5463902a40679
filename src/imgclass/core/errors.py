"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a path, an option, a dataset): the message says what and how to fix it."""


class DataError(UserError):
    """The data cannot be used as given (empty folder, one class, unmatched labels CSV...)."""
