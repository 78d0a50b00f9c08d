"""Settings: read from the environment and flags; a bad value names its setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from retailsync.config import EmbeddedTarget, ServerTarget, load_settings, parse_db_url
from retailsync.errors import ConfigError


class TestDatabaseUrl:
    """The scheme picks the backend; options are parsed by a table."""

    def test_default_is_embedded_in_dot_retailsync(self) -> None:
        settings = load_settings(environ={})
        assert settings.database == EmbeddedTarget(Path("./.retailsync/pg"))

    def test_embedded_path(self) -> None:
        assert parse_db_url("embedded:///var/lib/rs") == EmbeddedTarget(Path("/var/lib/rs"))

    def test_server_with_pool_options(self) -> None:
        target = parse_db_url("postgresql://u@db:5432/shop?pool_max=50&sslmode=require")
        assert isinstance(target, ServerTarget)
        assert target.pool_max == 50
        assert target.dsn == "postgresql://u@db:5432/shop?sslmode=require"

    @pytest.mark.parametrize(
        ("url", "fragment"),
        [
            ("mysql://db/x", "unknown scheme 'mysql'"),
            ("localhost:5432", "not a URL"),
            ("postgresql://db/x?pool_max=abc", "pool_max"),
            ("postgresql://db/x?pool_max=0", "pool_max"),
            ("postgresql://db/x?pool_min=9&pool_max=2", "pool_min"),
            ("postgresql://db/x?sslmod=require", "unknown option 'sslmod'"),
            ("postgresql:///x", "needs a host"),
            ("embedded://./x?fsync=off", "no options"),
        ],
    )
    def test_bad_urls_name_the_setting(self, url: str, fragment: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={"RETAILSYNC_DB_URL": url})
        assert caught.value.setting == "RETAILSYNC_DB_URL"
        assert fragment in str(caught.value)


class TestSettings:
    """Environment and flags go through one validation."""

    def test_environment_is_read(self) -> None:
        settings = load_settings(environ={"RETAILSYNC_PORT": "9001", "RETAILSYNC_WORKERS": "3"})
        assert (settings.port, settings.workers) == (9001, 3)

    def test_flags_override_environment(self) -> None:
        settings = load_settings({"port": 9002}, environ={"RETAILSYNC_PORT": "9001"})
        assert settings.port == 9002

    @pytest.mark.parametrize(
        ("env", "setting"),
        [
            ({"RETAILSYNC_PORT": "http"}, "RETAILSYNC_PORT"),
            ({"RETAILSYNC_PORT": "70000"}, "RETAILSYNC_PORT"),
            ({"RETAILSYNC_WORKERS": "0"}, "RETAILSYNC_WORKERS"),
            ({"RETAILSYNC_LOG_LEVEL": "loud"}, "RETAILSYNC_LOG_LEVEL"),
            ({"RETAILSYNC_MAX_BODY_BYTES": "10"}, "RETAILSYNC_MAX_BODY_BYTES"),
            ({"RETAILSYNC_DB_ULR": "x"}, "RETAILSYNC_DB_ULR"),
            ({"RETAILSYNC_EVENT_LOG_URL": "kafka://x"}, "RETAILSYNC_EVENT_LOG_URL"),
            ({"RETAILSYNC_EVENT_LOG_URL": "nats://h:4222?strem=x"}, "RETAILSYNC_EVENT_LOG_URL"),
            ({"RETAILSYNC_CDC_SLOT": "Bad Slot"}, "RETAILSYNC_CDC_SLOT"),
            ({"RETAILSYNC_MAX_CLOCK_DRIFT_MS": "-1"}, "RETAILSYNC_MAX_CLOCK_DRIFT_MS"),
        ],
    )
    def test_bad_values_name_the_setting(self, env: dict[str, str], setting: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(environ=env)
        assert caught.value.setting == setting

    def test_bad_flag_names_the_flag(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings({"port": -1}, environ={})
        assert caught.value.setting == "RETAILSYNC_PORT (--port)"

    def test_test_variables_are_not_settings(self) -> None:
        load_settings(environ={"RETAILSYNC_TEST_PG_URL": "postgresql://x/y"})
