"""The cache tests' private redis-server, for the breaker and rate limit tests too."""

from tests.cache.conftest import private_redis  # noqa: F401 (a fixture)
