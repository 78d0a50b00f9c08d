"""Domain services: async functions that take a connection inside the caller's transaction.

No HTTP and no caching policy in here; the API layer decides transactions and idempotency,
a service decides what a write means and refuses what the domain forbids.
"""
