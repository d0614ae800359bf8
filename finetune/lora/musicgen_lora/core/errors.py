"""The user-error type, in a module of its own so that threads.py (which common.py calls) can raise it
without an import cycle; everything else imports it from common.py."""


class UserError(Exception):
    """A problem the user can fix (bad path, corrupt file, bad flag). Printed as one line, exit 2."""
