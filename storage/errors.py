"""Storage errors: one type, always naming the path and the problem."""


class StoreError(Exception):
    """A store or table is missing, foreign, incompatible, or asked for something out of range."""
