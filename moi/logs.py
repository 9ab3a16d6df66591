"""Live output of jobs: captured on the engine, kept (capped) in Redis, pushed on pub/sub.

On the engine, :func:`start` tees ``sys.stdout`` and ``sys.stderr`` for the
length of a job (what the job prints still reaches ipyparallel's own
``ar.stdout``) and a shell command's output is read line by line
(:func:`communicate`).  One thread per engine ships the lines every
:data:`FLUSH_INTERVAL` seconds, in one script call per batch: the lines go to
the LIST ``<id>:log`` (the last :data:`MAX_LINES` lines or :data:`MAX_BYTES`
bytes), their count to the HASH ``<id>:log:meta``, and the batch, as
``{"start": n, "lines": [...]}``, to the channel ``<id>:log:pubsub``.  Both keys
expire with the job's other keys.  Lines are numbered from 0 over the job's
whole output, so a reader asks for "lines from n on" and sees what was dropped.

On the server, :func:`read_lines` reads kept lines and :class:`LogHub` (one
pub/sub connection per process) feeds :class:`LogFollower`\\ s, one per job
a websocket follows.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypedDict

import redis
import redis.asyncio as aioredis

from moi import connection, keys

log = logging.getLogger("moi.logs")

#: Most lines kept per job (the oldest go first).
MAX_LINES = 10_000
#: Most bytes of lines kept per job (the oldest go first).
MAX_BYTES = 1 << 20
#: Longest line kept; a longer one is cut, ending with :data:`CUT`.
MAX_LINE = 16 * 1024
CUT = " [line cut: longer than 16 KiB]"
#: Seconds between two looks at what a running job wrote (passed on, then shipped).
DRAIN_INTERVAL = 0.01
#: Shortest time between two shipments of a running job's lines (seconds).
FLUSH_INTERVAL = 0.01
#: After a shipment of this many lines, the next waits :data:`FLOOD_INTERVAL` seconds.
FLOOD_LINES, FLOOD_INTERVAL = 1_000, 0.1
#: Most lines per script call (a larger shipment is split).
BATCH_LINES = 2_000
#: Seconds between two shipments of the engine's counters.
STATS_INTERVAL = 1.0
#: Upper bounds (seconds) of the run-time histogram's buckets.
RUN_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)

#: Appends lines (one argument, joined by newlines), trims to the caps, refreshes the
#: expiry, publishes the batch.
APPEND = """
local CUT = ' [line cut: longer than 16 KiB]'
local ttl, max_lines, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_line, skipped = tonumber(ARGV[4]), tonumber(ARGV[5])
local lines, added, text, at = {}, 0, ARGV[6], 1
while at <= #text + 1 do
  local stop = string.find(text, '\\n', at, true) or (#text + 1)
  local line = string.sub(text, at, stop - 1)
  if #line > max_line then
    local cut = max_line
    while cut > 0 and (string.byte(line, cut + 1) or 0) >= 128
        and string.byte(line, cut + 1) < 192 do
      cut = cut - 1  -- not in the middle of a UTF-8 character
    end
    line = string.sub(line, 1, cut) .. CUT
  end
  lines[#lines + 1] = line
  added = added + #line
  at = stop + 1
end
local n = #lines
for i = 1, n, 500 do
  redis.call('RPUSH', KEYS[1], unpack(lines, i, math.min(i + 499, n)))
end
local total = redis.call('HINCRBY', KEYS[2], 'total', n + skipped)
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', added)
local len = redis.call('LLEN', KEYS[1])
if len > max_lines then
  for _, line in ipairs(redis.call('LRANGE', KEYS[1], 0, len - max_lines - 1)) do
    bytes = bytes - #line
  end
  redis.call('LTRIM', KEYS[1], len - max_lines, -1)
  len = max_lines
end
while bytes > max_bytes and len > 0 do
  bytes = bytes - #redis.call('LPOP', KEYS[1])
  len = len - 1
end
redis.call('HSET', KEYS[2], 'bytes', bytes)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
-- nobody watching: nothing to encode
if n > 0 and redis.call('PUBSUB', 'NUMSUB', KEYS[3])[2] > 0 then
  redis.call('PUBLISH', KEYS[3], cjson.encode({start = total - n, lines = lines}))
end
return total
"""

#: Reads kept lines from an absolute line number: ``{start, total, lines}``.
READ = """
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
local len = redis.call('LLEN', KEYS[1])
local first = total - len
local start = math.min(math.max(tonumber(ARGV[1]), first), total)
local limit = tonumber(ARGV[2])
if limit == 0 or start == total then
  return {start, total, {}}
end
local stop = -1
if limit > 0 then
  stop = start - first + limit - 1
end
return {start, total, redis.call('LRANGE', KEYS[1], start - first, stop)}
"""


class LogSlice(TypedDict):
    """Lines of a job's output: ``lines`` are numbers ``start`` to ``next - 1``."""

    id: str
    start: int
    lines: list[str]
    next: int
    #: Lines written so far (``next`` is smaller when a limit cut the read).
    total: int


def _slice(job_id: str, reply: list[Any]) -> LogSlice:
    start, total, raw = int(reply[0]), int(reply[1]), reply[2]
    lines = [line.decode("utf-8", "replace") if isinstance(line, bytes) else line for line in raw]
    return LogSlice(id=job_id, start=start, lines=lines, next=start + len(lines), total=total)


def _read_args(job_id: str, start: int, limit: int | None) -> list[int]:
    keys.check_node_id(job_id, "job id")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a whole number >= 0, not {start!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a whole number >= 0, not {limit!r}")
    return [start, -1 if limit is None else limit]


async def read_lines(
    redis_client: aioredis.Redis, job_id: str, start: int = 0, limit: int | None = None
) -> LogSlice:
    """The kept output lines of ``job_id`` from line number ``start`` on.

    Parameters
    ----------
    redis_client : redis.asyncio.Redis
    job_id : str
        The job (checked by :func:`moi.keys.check_node_id`; whose job it is
        is the caller's to check).
    start : int
        First line number wanted (0: the first line the job wrote).  Lines
        no longer kept are skipped: the reply's ``start`` says where it begins.
    limit : int, optional
        Most lines returned (all from ``start`` on when omitted).

    Returns
    -------
    LogSlice
        ``{"id", "start", "lines", "next", "total"}``; ask for ``next`` to go on.
    """
    args = _read_args(job_id, start, limit)
    script = redis_client.register_script(READ)
    return _slice(job_id, await script(keys=[keys.log(job_id), keys.log_meta(job_id)], args=args))


def read_lines_sync(
    redis_client: redis.Redis, job_id: str, start: int = 0, limit: int | None = None
) -> LogSlice:
    """:func:`read_lines` with a synchronous client (the CLI)."""
    args = _read_args(job_id, start, limit)
    script = redis_client.register_script(READ)
    return _slice(job_id, script(keys=[keys.log(job_id), keys.log_meta(job_id)], args=args))


def parse_batch(data: bytes | str) -> tuple[int, list[str]] | None:
    """``(start, lines)`` of a message of a log channel; ``None`` when malformed."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    start, lines = payload.get("start"), payload.get("lines")
    if not isinstance(start, int) or not isinstance(lines, list):
        return None
    return start, [str(line) for line in lines]


# -- on the engine ----------------------------------------------------------------------
class Capture:
    """One job's output on its way to Redis (made by :func:`start`)."""

    def __init__(self, client: redis.Redis, job_id: str, ttl: int, context: str) -> None:
        self.job_id, self.context, self.ttl = job_id, context, ttl
        self._append = _append_script(client)
        # text written and not yet split into lines; stdout and stderr mix as in a terminal
        # (2>&1).  Writers only append; the shipper takes a prefix (atomic list operations)
        self._written: list[str] = []
        self._partial = ""
        self._sending = threading.Lock()
        self._started = time.monotonic()
        self._restore: list[tuple[str, Any, _Tee | _ErrTee]] = []
        self._arrived: Callable[[], None] = _shipper().lines.set

    def drain(self) -> None:
        """Pass what the job wrote on to the original streams, and take it for shipping."""
        for _, _, tee in self._restore:
            tee.drain()

    def feed(self, text: str) -> None:
        """Take ``text`` written to the job's stdout or stderr."""
        if not self._written:  # the first since the last shipment: wake the shipper
            self._arrived()
        self._written.append(text)

    def flush(self, final: bool = False) -> int:
        """Ship the whole lines written so far (``final``: the unfinished ones too); count them."""
        with self._sending:
            lines = self._take(final)
            if lines:
                self._ship(lines)
            return len(lines)

    def _take(self, final: bool) -> list[str]:
        written = self._written
        count = len(written)
        taken = written[:count]  # writers may append meanwhile: only this prefix goes
        del written[:count]
        try:
            text = "".join(taken)
        except TypeError:  # a stream that took something else than text
            text = "".join(map(str, taken))
        out = (self._partial + text).split("\n")
        self._partial = out.pop()
        if final or len(self._partial) > MAX_LINE:  # an endless line is shipped in pieces
            if self._partial:
                out.append(self._partial)
            self._partial = ""
        return out

    def _ship(self, lines: list[str]) -> None:
        skipped = max(0, len(lines) - MAX_LINES)
        lines = lines[skipped:]
        try:
            for at in range(0, len(lines), BATCH_LINES):
                # one argument: lines hold no newline, so joining them loses nothing
                batch = "\n".join(lines[at : at + BATCH_LINES]).encode("utf-8", "replace")
                self._append(
                    keys=[keys.log(self.job_id), keys.log_meta(self.job_id)]
                    + [keys.log_channel(self.job_id)],
                    args=[self.ttl, MAX_LINES, MAX_BYTES, MAX_LINE, skipped, batch],
                )
                skipped = 0
        except redis.RedisError as exc:  # the job goes on; its output still reaches ar.stdout
            log.warning("output of job %s not kept: %s", self.job_id, exc)

    def stop(self) -> None:
        """Stop teeing and ship what is left (before the job's final status is written)."""
        _shipper().idle(self)
        for name, original, tee in self._restore:  # stdout first: it may hold older text
            tee.release()  # a stream the job's code kept (a log handler) now writes through
            if getattr(sys, name) is tee:
                setattr(sys, name, original)
        self._restore = []
        self.flush(final=True)

    def finished(self, error: BaseException | None) -> None:
        """Count the job as finished (its status from ``error``) and its run time."""
        from moi.errors import JobCancelled

        status = "Success" if error is None else "Failed"
        if isinstance(error, JobCancelled | KeyboardInterrupt):
            status = "Cancelled"
        seconds = time.monotonic() - self._started
        bucket = next((str(b) for b in RUN_BUCKETS if seconds <= b), "+Inf")
        _shipper().count(
            {
                keys.stat_field("finished", self.context, status): 1,
                keys.stat_field("run_count", self.context): 1,
                keys.stat_field("run_bucket", self.context, bucket): 1,
            },
            {keys.stat_field("run_sum", self.context): seconds},
        )


class _Tee:
    """A text stream that passes what is written on to ``stream`` and to a :class:`Capture`.

    ``write`` is a ``StringIO``'s own (C) method: a job's ``print`` costs no
    Python call more than without moi.  The shipping thread drains
    it every :data:`DRAIN_INTERVAL` seconds (and ``flush()`` at once),
    writing the text on to the original stream (so it still reaches
    ``ar.stdout``) and handing it to the capture.
    """

    def __init__(self, stream: Any, capture: Capture) -> None:
        self._stream, self._capture = stream, capture
        self._lock = threading.Lock()
        self._buffer = io.StringIO(newline="")
        self.write: Callable[[str], int] = self._buffer.write
        # a writer that looked ``write`` up just before a drain swapped buffers
        # writes into the old one: it is read once more at the next drain
        self._retired: tuple[io.StringIO, int] | None = None
        self._closed = False

    def drain(self) -> None:
        """Pass the text written since the last drain on to the stream and the capture."""
        with self._lock:
            if self._closed:
                return
            old, retired = self._buffer, self._retired
            late = "" if retired is None else retired[0].getvalue()[retired[1] :]
            if not old.tell() and not late:
                return
            self._buffer = io.StringIO(newline="")
            self.write = self._buffer.write
            value = old.getvalue()
            self._retired = (old, len(value))
            text = late + value
            if text:
                self._stream.write(text)
                self._capture.feed(text)

    def flush(self) -> None:
        self.drain()
        self._stream.flush()

    def writelines(self, lines: Any) -> None:
        for text in lines:
            self.write(text)

    def release(self) -> None:
        """Drain for the last time; from now on writes go straight to the stream."""
        self.drain()
        with self._lock:
            self._closed = True
            self.write = self._stream.write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _ErrTee:
    """``sys.stderr`` during a job: passes each write on at once, after the stdout before it.

    Writes to stderr are rarer than to stdout; passing them on at once, after
    draining stdout, keeps the order of the two in the capture.
    """

    def __init__(self, stream: Any, capture: Capture, stdout: _Tee) -> None:
        self._stream, self._capture, self._stdout = stream, capture, stdout
        self._released = False

    def write(self, text: str) -> Any:
        if self._released:
            return self._stream.write(text)
        self._stdout.drain()
        written = self._stream.write(text)  # raises for what the stream does not take
        self._capture.feed(text)
        return written

    def writelines(self, lines: Any) -> None:
        for text in lines:
            self.write(text)

    def drain(self) -> None:
        """Nothing waits here: every write was passed on."""

    def release(self) -> None:
        """From now on writes go straight to the stream."""
        self._released = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Shipper(threading.Thread):
    """Ships the running job's lines as they come (at most every :data:`FLUSH_INTERVAL` s).

    Also sends the counters every :data:`STATS_INTERVAL` s.
    """

    def __init__(self) -> None:
        super().__init__(name="moi-log-shipper", daemon=True)
        self._wake = threading.Event()
        #: Set when a running job wrote something and nothing was waiting to be shipped.
        self.lines = threading.Event()
        self._lock = threading.Lock()
        self._capture: Capture | None = None
        self._client: redis.Redis | None = None
        self._counts: dict[str, int] = {}
        self._floats: dict[str, float] = {}

    def busy(self, capture: Capture, client: redis.Redis) -> None:
        with self._lock:
            self._capture, self._client = capture, client
        self._wake.set()
        self.lines.set()

    def idle(self, capture: Capture) -> None:
        with self._lock:
            if self._capture is capture:
                self._capture = None

    def count(self, counts: dict[str, int], floats: dict[str, float]) -> None:
        with self._lock:
            for field, n in counts.items():
                self._counts[field] = self._counts.get(field, 0) + n
            for field, x in floats.items():
                self._floats[field] = self._floats.get(field, 0.0) + x
        self._wake.set()

    def run(self) -> None:
        last_stats, last_ship, shipped = time.monotonic(), 0.0, 0
        while True:
            with self._lock:
                capture = self._capture
            if capture is None and not self._counts:
                self._wake.wait()
                self._wake.clear()
                continue
            if capture is None:
                time.sleep(STATS_INTERVAL)
            else:
                # lines ship at most every FLUSH_INTERVAL s, a flood in fewer, larger batches
                pause = FLOOD_INTERVAL if shipped >= FLOOD_LINES else FLUSH_INTERVAL
                due = last_ship + pause - time.monotonic() if capture._written else 1.0
                self.lines.wait(max(0.0, min(DRAIN_INTERVAL, due)))  # a flush() wakes it sooner
                self.lines.clear()
                capture.drain()
                if capture._written and time.monotonic() >= last_ship + pause:
                    last_ship, shipped = time.monotonic(), capture.flush()
            if time.monotonic() - last_stats >= STATS_INTERVAL:
                last_stats = time.monotonic()
                self._send_counts()

    def _send_counts(self) -> None:
        with self._lock:
            counts, floats, client = self._counts, self._floats, self._client
            self._counts, self._floats = {}, {}
        if client is None or not (counts or floats):
            return
        try:
            with client.pipeline(transaction=False) as pipe:
                for field, n in counts.items():
                    pipe.hincrby(keys.STATS, field, n)
                for field, x in floats.items():
                    pipe.hincrbyfloat(keys.STATS, field, x)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("moi's counters not updated: %s", exc)


@functools.cache
def _client(redis_url: str) -> redis.Redis:
    return connection.client(redis_url)


@functools.cache
def _append_script(client: redis.Redis) -> Any:
    return client.register_script(APPEND)


_the_shipper: _Shipper | None = None
_current: Capture | None = None


def _shipper() -> _Shipper:
    global _the_shipper
    if _the_shipper is None or not _the_shipper.is_alive():
        _the_shipper = _Shipper()
        _the_shipper.start()
    return _the_shipper


def enabled() -> bool:
    """Whether output is captured here: unless ``MOI_LOG_CAPTURE`` is ``0``/``off``/``no``."""
    return os.environ.get("MOI_LOG_CAPTURE", "1").strip().lower() not in ("0", "off", "no")


def start(redis_url: str, job_id: str, ttl: int, context: str) -> Capture:
    """Capture the output of job ``job_id`` on this engine until :meth:`Capture.stop`.

    ``sys.stdout`` and ``sys.stderr`` are teed (what is written still goes
    where it went); lines are shipped every :data:`FLUSH_INTERVAL` seconds.
    With ``MOI_LOG_CAPTURE=0`` in the engine's environment nothing is teed
    (the counters are still kept).
    """
    global _current
    client = _client(redis_url)
    capture = Capture(client, job_id, ttl, context)
    if enabled():
        out = _Tee(sys.stdout, capture)
        err = _ErrTee(sys.stderr, capture, out)
        capture._restore += [("stdout", sys.stdout, out), ("stderr", sys.stderr, err)]
        sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
        _current = capture
    _shipper().busy(capture, client)
    return capture


def _after_fork_in_child() -> None:
    """A forked child writes to the original streams: nothing drains the tees there."""
    global _current, _the_shipper
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, _Tee | _ErrTee):
            setattr(sys, name, stream._stream)
    _current = _the_shipper = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> Capture | None:
    """The capture of the job running in this process, if any."""
    return _current if _current is not None and _current._restore else None


def communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """``proc.communicate()``, feeding each line to the running job's capture as it comes.

    Outside a captured job this is ``proc.communicate()`` itself.
    """
    capture = current()
    if capture is None or proc.stdout is None or proc.stderr is None:
        return proc.communicate()
    found: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def pump(name: str, pipe: IO[str]) -> None:
        for text in pipe:
            found[name].append(text)
            capture.feed(text)
        pipe.close()

    readers = [
        threading.Thread(target=pump, args=(name, pipe), daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    proc.wait()
    for reader in readers:
        reader.join()
    return "".join(found["stdout"]), "".join(found["stderr"])


# -- on the server ----------------------------------------------------------------------
#: Most lines one frame carries; a follower behind by more sees a jump of ``start``.
FRAME_LINES = 2_000
#: Most jobs one websocket follows the output of at once.
MAX_FOLLOWED = 16


def parse_log_request(message: str | bytes) -> tuple[str, int | None] | str | None:
    """Read a websocket frame ``{"log": id, "from": n}``.

    Returns ``None`` when the frame is not a log request (another verb), an
    error message when it is a malformed one, else ``(job id, from)``:
    ``from`` is the first line number wanted (0 when omitted), ``None``
    (``"from": null``) to stop following.
    """
    if b'"log"' not in (message if isinstance(message, bytes) else message.encode()):
        return None
    try:
        payload = json.loads(message)
    except (ValueError, RecursionError):
        return None  # the usual parser says what is wrong
    if not isinstance(payload, dict) or "log" not in payload:
        return None
    usage = 'follow a job\'s output with {"log": "<job id>", "from": 0} ("from": null stops)'
    job_id, start = payload.get("log"), payload.get("from", 0)
    if set(payload) - {"log", "from"} or not isinstance(job_id, str):
        return usage
    if start is not None and (type(start) is not int or start < 0):
        return f"{usage}; from must be a line number >= 0"
    return job_id, start


def follow_refusal(
    wanted: tuple[str, int | None] | str, view: Any, followed: dict[str, Any]
) -> str | None:
    """Why a websocket may not follow this output, or ``None``.

    ``view`` is the socket's :class:`moi.group.Group` (the user's tree):
    only jobs in it can be followed, whoever asks for another.
    """
    if isinstance(wanted, str):
        return wanted
    job_id, start = wanted
    if view is None:
        return "not ready yet: try again"
    if view.nodes.get(job_id, (None, None))[1] != "job":
        return f"not in your tree (or not a job): {job_id[:128]}"
    if start is not None and job_id not in followed and len(followed) >= MAX_FOLLOWED:
        return f"already following {MAX_FOLLOWED} jobs' output; stop one first (from: null)"
    return None


class LogFollower:
    """Sends one job's lines to one client from a line number on, then live.

    Parameters
    ----------
    hub : LogHub
    job_id : str
    send : callable
        Called with each frame ``{"log": {"id", "start", "lines", "next"}}``.
    drain : async callable, optional
        Awaited after each frame of a catch-up, so a slow client sets the pace.
    """

    def __init__(
        self,
        hub: LogHub,
        job_id: str,
        send: Callable[[dict[str, Any]], None],
        drain: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.hub, self.job_id, self.send, self.drain = hub, job_id, send, drain
        self.next = 0
        self._reading = False
        self._again = False
        self._closed = False

    async def start(self, start: int) -> None:
        """Subscribe, then send the kept lines from ``start`` on."""
        self.next = start
        await self.hub.watch(self.job_id, self)
        await self.catch_up()

    async def close(self) -> None:
        """Stop following."""
        self._closed = True
        await self.hub.unwatch(self.job_id, self)

    async def catch_up(self) -> None:
        """Send what Redis holds past ``next`` (again if batches came meanwhile)."""
        if self._reading:
            self._again = True
            return
        self._reading = True
        try:
            while not self._closed:
                self._again = False
                got = await read_lines(self.hub.client, self.job_id, self.next)
                for at in range(0, len(got["lines"]), FRAME_LINES):
                    self._emit(got["start"] + at, got["lines"][at : at + FRAME_LINES])
                    if self.drain is not None:
                        await self.drain()
                if not self._again:
                    return
        finally:
            self._reading = False

    def on_batch(self, start: int, lines: list[str]) -> None:
        """New lines were published (``None`` start: read everything again)."""
        if self._closed:
            return
        if self._reading or start > self.next:  # a read is on, or a batch was missed
            self._again = True
            if not self._reading:
                self.hub.background(self.catch_up())
            return
        skip = self.next - start
        if skip < len(lines):
            self._emit(self.next, lines[skip:])

    def _emit(self, start: int, lines: list[str]) -> None:
        if not lines:
            return
        first = max(start, start + len(lines) - FRAME_LINES)
        lines = lines[first - start :]
        self.next = first + len(lines)
        self.send({"log": {"id": self.job_id, "start": first, "lines": lines, "next": self.next}})


class LogHub:
    """One pub/sub connection per server process for the log channels of followed jobs.

    Messages are drained in batches; the lines of one job in one drain go to
    each of its followers as one frame.
    """

    def __init__(self, redis_url: str) -> None:
        self.client = connection.async_client(redis_url)
        self._url = redis_url
        self._followers: dict[str, set[LogFollower]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._confirming: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def channel_count(self) -> int:
        """Log channels subscribed now."""
        return len(self._followers)

    async def watch(self, job_id: str, follower: LogFollower) -> None:
        """Deliver ``job_id``'s batches to ``follower`` (returns once subscribed)."""
        if self._pubsub is None:
            self._pubsub = connection.async_client(self._url).pubsub()
        followers = self._followers.setdefault(job_id, set())
        followers.add(follower)
        channel = keys.log_channel(job_id)
        if len(followers) == 1:
            future = asyncio.get_running_loop().create_future()
            self._confirming[channel] = future
            await self._pubsub.subscribe(channel)
        if self._task is None:  # listen once something is subscribed
            self._task = asyncio.ensure_future(self._listen())
        pending = self._confirming.get(channel)
        if pending is not None:
            await asyncio.wait([pending], timeout=5)
            if self._confirming.get(channel) is pending and pending.done():
                del self._confirming[channel]

    async def unwatch(self, job_id: str, follower: LogFollower) -> None:
        followers = self._followers.get(job_id)
        if followers is None:
            return
        followers.discard(follower)
        if not followers:
            del self._followers[job_id]
            if self._pubsub is not None:
                try:
                    await self._pubsub.unsubscribe(keys.log_channel(job_id))
                except (redis.RedisError, OSError):
                    pass

    async def _listen(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
                batches: dict[str, list[tuple[int, list[str]]]] = {}
                while message is not None:
                    self._take(message, batches)
                    message = await self._pubsub.get_message(timeout=0)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("log channels lost Redis (%s); resubscribing", exc)
                delay = 0.5
                await asyncio.sleep(delay)
                while not await self._resubscribe():  # a pub/sub without a connection
                    delay = min(delay * 2, 5.0)  # cannot be listened on: retry until it has one
                    await asyncio.sleep(delay)
                continue
            for job_id, parts in batches.items():
                start, lines = _joined(parts)
                for follower in list(self._followers.get(job_id, ())):
                    follower.on_batch(start, lines)

    def _take(self, message: dict[str, Any], batches: dict[str, list[Any]]) -> None:
        channel = message["channel"].decode(errors="replace")
        if message["type"] == "subscribe":
            future = self._confirming.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if message["type"] != "message" or not channel.endswith(":log:pubsub"):
            return
        parsed = parse_batch(message["data"])
        if parsed is not None:
            batches.setdefault(channel[: -len(":log:pubsub")], []).append(parsed)

    async def _resubscribe(self) -> bool:
        """Subscribe every followed log channel on a new connection; whether it worked."""
        try:
            if self._pubsub is not None:
                await self._pubsub.aclose()
            self._pubsub = connection.async_client(self._url).pubsub()
            channels = [keys.RELAY_CHANNEL, *map(keys.log_channel, self._followers)]
            await self._pubsub.subscribe(*channels)  # the first keeps the connection up
        except (redis.RedisError, OSError) as exc:
            log.warning("cannot resubscribe the log channels yet: %s", exc)
            return False
        for followers in self._followers.values():
            for follower in followers:
                self.background(follower.catch_up())
        return True

    async def stop(self) -> None:
        """Stop listening and close the connections."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2)
            self._task = None
        for closer in (self._pubsub, self.client):
            if closer is not None:
                try:
                    await asyncio.wait_for(closer.aclose(), 2)
                except (redis.RedisError, OSError, asyncio.TimeoutError):
                    pass


def _joined(parts: list[tuple[int, list[str]]]) -> tuple[int, list[str]]:
    """Consecutive batches of one job as one; a gap keeps only what follows it."""
    start, lines = parts[0][0], list(parts[0][1])
    for part_start, part_lines in parts[1:]:
        if part_start == start + len(lines):
            lines += part_lines
        else:
            start, lines = part_start, list(part_lines)
    return start, lines


_hub: LogHub | None = None


def current_hub() -> LogHub | None:
    """The process's hub if one was made."""
    return _hub


def get_hub() -> LogHub:
    """The process's hub, made on first use."""
    global _hub
    if _hub is None:
        from moi import runtime

        _hub = LogHub(runtime.redis_url())
    return _hub


async def close_hub() -> None:
    """Stop the process's hub (tests, server shutdown)."""
    global _hub
    if _hub is not None:
        await _hub.stop()
        _hub = None
