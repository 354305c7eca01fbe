class UserError(Exception):
    """A problem the user can fix (bad input, config, missing artifact): shown as one line, exit 1."""
