"""retailsync: retail data kept consistent and fresh across sales channels and regions."""

__version__ = "0.1.0"
