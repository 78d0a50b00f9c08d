"""Opening a log from RETAILSYNC_EVENT_LOG_URL: the scheme picks the backend, a bad URL names
the setting."""

from __future__ import annotations

import pytest

from retailsync.db.database import Database
from retailsync.errors import ConfigError
from retailsync.eventlog import open_event_log
from retailsync.eventlog.nats import NatsEventLog
from retailsync.eventlog.postgres import PostgresEventLog
from tests.eventlog.conftest import delete_streams, ids, make_events


class TestBackendByUrl:
    async def test_postgres_is_the_app_database(self, db: Database) -> None:
        log = await open_event_log("postgres", db=db)
        assert isinstance(log, PostgresEventLog)
        await log.append(make_events(2))
        assert await db.fetchval("SELECT count(*) FROM event_log") == 2
        await log.close()
        assert await db.fetchval("SELECT 1") == 1  # the app's pool is not the log's to close

    async def test_postgresql_url_opens_its_own_pool(self, db: Database, database_dsn: str) -> None:
        joiner = "&" if "?" in database_dsn else "?"
        log = await open_event_log(f"{database_dsn}{joiner}pool_max=2")
        await log.append(make_events(3))
        assert ids(await log.read(0)) == ids(await PostgresEventLog(db).read(0))
        await log.close()

    async def test_nats_url(self, nats_url: str) -> None:
        log = await open_event_log(f"{nats_url}?stream=test-factory")
        assert isinstance(log, NatsEventLog)
        await log.close()
        await delete_streams(nats_url, "test-factory")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("kafka://broker:9092", "unknown event log backend"),
        ("postgres-please", "unknown event log backend"),
        ("nats://localhost:4222?strem=x", "unknown option 'strem'"),
        ("nats://localhost:4222?max_age=soon", "option max_age='soon'"),
        ("nats://localhost:4222?replicas=0", "option replicas='0': must be at least 1"),
        ("nats://localhost:4222?stream=a.b", "option stream='a.b'"),
        ("nats://localhost:99999", "bad port"),
        ("nats://", "needs a host"),
        ("nats://localhost:4222/events", "no path"),
        ("postgresql://db/x?pool_max=0", "pool_max"),
        ("postgresql://db/x?sslmod=require", "unknown option 'sslmod'"),
        ("postgres", "none was given"),
    ],
)
async def test_bad_urls_name_the_setting(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await open_event_log(url)
    assert caught.value.setting == "RETAILSYNC_EVENT_LOG_URL"
    assert fragment in str(caught.value)
