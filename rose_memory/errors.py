"""The one exception type for errors a user can cause."""


class RoseMemoryError(ValueError):
    """Bad input or an impossible request. The message says what to fix.

    Raised before anything is written to the weights or the ledger.
    """
