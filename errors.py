"""The one exception type a user mistake raises: the CLI prints its message and exits 2."""


class UserError(Exception):
    """Bad input, a missing file, a mismatched cache: anything the user can fix.

    The message is one sentence that says what is wrong and, where it helps, what to do.
    """
