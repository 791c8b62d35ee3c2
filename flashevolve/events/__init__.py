"""Events: the typed schema, the append-only log, frames and metrics."""

from flashevolve.events.log import EventLog, events_to_frame
from flashevolve.events.schema import SCHEMA, Event, Kind

__all__ = ["SCHEMA", "Event", "EventLog", "Kind", "events_to_frame"]
