"""The durable, ordered log of change events, on PostgreSQL or NATS JetStream.

Open one with ``open_event_log(url)``; write consumers against ``EventLog`` and ``Consumer``
and they run on either backend.
"""

from retailsync.eventlog.base import (
    Consumer,
    DeadLetter,
    Delivery,
    EventLog,
    EventLogError,
    EventLogUnavailable,
    Lag,
    LogRecord,
)
from retailsync.eventlog.factory import SETTING, open_event_log

__all__ = [
    "SETTING",
    "Consumer",
    "DeadLetter",
    "Delivery",
    "EventLog",
    "EventLogError",
    "EventLogUnavailable",
    "Lag",
    "LogRecord",
    "open_event_log",
]
