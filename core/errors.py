def shortened(text: str, limit: int = 60) -> str:
    """Text for a one-line message: whole, or its start and its length when it is longer than `limit`."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class UserError(Exception):
    """A problem the user can fix (bad input, config, missing artifact): shown as one line, exit 1."""
