"""Append-only event log: in memory for frames, on disk (JSON lines) for durability."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from flashevolve.events.schema import SCHEMA, Event, Kind

Listener = Callable[[Event], None]


#: Events kept as Python objects before they are packed into a columnar chunk.
CHUNK_EVENTS = 20_000


class EventLog:
    """Every event of a run, in order.

    Writes go to memory and, when ``path`` is given, to a JSON-lines file flushed per line, so a
    killed process loses at most the line being written.  In memory, the newest events are
    Python objects (what listeners and ``snapshot()`` hand out) and every ``chunk_events`` of
    them are packed into a Polars chunk -- columnar, several times smaller -- so a day-long run
    does not hold millions of event objects (docs/reliability.md, the soak run).  Reads from
    another thread (a notebook reading frames while the run goes on) take a consistent view under
    a lock.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        clock: Any = None,
        history: list[Event] | None = None,
        chunk_events: int = CHUNK_EVENTS,
    ) -> None:
        if chunk_events < 1:
            raise ValueError("chunk_events must be at least 1")
        self.chunk_events = chunk_events
        self._chunks: list[pl.DataFrame] = []
        self._packed = 0  # events in the chunks
        # ``history``: events of an earlier session of the same run (resume); already on disk.
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._before_write: list[Listener] = []
        #: the first error writing the file (a full disk, ...); writing stops there
        self.write_error: OSError | None = None
        for event in history or ():
            self._keep(event)
        self._listeners: list[Listener] = []
        self.clock = clock
        self.path = Path(path) if path is not None else None
        self._fh: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8", buffering=1)

    # -- writing -----------------------------------------------------------------------------
    def emit(self, kind: Kind | str, **fields: Any) -> Event:
        if self.clock is not None:
            fields.setdefault("ts", self.clock.now())
            fields.setdefault("wall", self.clock.wall())
        event = Event(kind=str(kind), **fields)
        self.append(event)
        return event

    def append(self, event: Event) -> None:
        for listener in self._before_write:
            listener(event)
        with self._lock:
            self._keep(event)
            if self._fh is not None:
                try:
                    self._fh.write(json.dumps(event.to_dict(), default=_jsonable) + "\n")
                except OSError as err:  # a full disk: stop writing, keep what is there
                    self._stop_writing(err)
        for listener in self._listeners:
            listener(event)

    def _keep(self, event: Event) -> None:
        self._events.append(event)
        if len(self._events) >= self.chunk_events:
            self._chunks.append(events_to_frame(self._events))
            self._packed += len(self._events)
            self._events = []

    def subscribe(self, listener: Listener, *, before_write: bool = False) -> None:
        """Call ``listener`` with every new event; ``before_write=True`` calls it before the
        event reaches the log file (the run directory persists an admitted artifact first, so
        the log never announces an admission a crash could lose)."""
        (self._before_write if before_write else self._listeners).append(listener)

    def stop_writing(self, err: OSError) -> None:
        """Write nothing more to the file (the run directory failed elsewhere)."""
        with self._lock:
            self._stop_writing(err)

    def _stop_writing(self, err: OSError) -> None:
        if self.write_error is None:
            self.write_error = err
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.close()
                except OSError as err:
                    self.write_error = self.write_error or err
                self._fh = None

    # -- reading -----------------------------------------------------------------------------
    def snapshot(self) -> list[Event]:
        """Every event as objects (packed chunks are unpacked: costly for very long runs --
        prefer :meth:`frame` or :meth:`tail` there)."""
        with self._lock:
            chunks, tail = list(self._chunks), list(self._events)
        out: list[Event] = []
        for chunk in chunks:
            out.extend(frame_to_events(chunk))
        return out + tail

    def tail(self, n: int = 1) -> list[Event]:
        """The newest ``n`` events (cheap)."""
        with self._lock:
            if n <= len(self._events):
                return self._events[len(self._events) - n :]
        return self.snapshot()[-n:]

    def __len__(self) -> int:
        return self._packed + len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.snapshot())

    def of_kind(self, *kinds: str) -> list[Event]:
        wanted = {str(k) for k in kinds}
        return [e for e in self.snapshot() if e.kind in wanted]

    def frame(self) -> pl.DataFrame:
        with self._lock:
            chunks, tail = list(self._chunks), list(self._events)
        if not chunks:
            return events_to_frame(tail)
        return pl.concat([*chunks, events_to_frame(tail)], how="vertical")

    @staticmethod
    def read(path: str | Path) -> list[Event]:
        """Load events from a JSON-lines log; a torn last line (killed writer) is skipped."""
        events: list[Event] = []
        with Path(path).open(encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(raw.get("data"), str):
                    raw["data"] = json.loads(raw["data"])
                events.append(Event(**raw))
        return events


def events_to_frame(events: Iterable[Event]) -> pl.DataFrame:
    """Build the frame column by column (much faster than row dicts for long runs)."""
    events = list(events)
    if not events:
        return pl.DataFrame(schema=SCHEMA)
    columns = {name: [getattr(e, name) for e in events] for name in SCHEMA}
    columns["data"] = [
        None if d is None else json.dumps(d, default=_jsonable, sort_keys=True)
        for d in columns["data"]
    ]
    return pl.DataFrame(columns, schema=SCHEMA)


def frame_to_events(frame: pl.DataFrame) -> list[Event]:
    """The inverse of :func:`events_to_frame` (``data`` decoded back into a dict)."""
    out = []
    for row in frame.iter_rows(named=True):
        raw = row.get("data")
        row["data"] = json.loads(raw) if raw else None
        out.append(Event(**row))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)
