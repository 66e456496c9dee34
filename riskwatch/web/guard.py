"""What every worker of the web app shares to keep strangers out: the session secret, the live sessions, the
failed sign-ins per address, and the host names it answers to.

They live in one folder beside the deployment (``<prod_deployment_path>/web_access``): a random secret created
once (mode 0600) that signs the dashboard's cookies, a small SQLite file of the live sessions and of the
failures per client address, so that every gunicorn worker agrees on who is signed in and who must wait, and
beside it the count of changes to those failures, which lets each worker keep what it read until one changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import logging
import math
import mmap
import os
import secrets
import sqlite3
import string
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.exceptions import TooManyRequests

from riskwatch.core.errors import PipelineError, describe_os_error

log = logging.getLogger("app")

ACCESS_FOLDER = "web_access"
SECRET_FILE = "session_secret"
STORE_FILE = "access.sqlite"
SECRET_BYTES = 32
# Failures in a row an address may make freely; each further one makes it wait 4 s, 8 s, 16 s ... up to the
# longest wait.
FREE_FAILURES = 5
FIRST_WAIT_SECONDS = 4
LONGEST_WAIT_SECONDS = 15 * 60
# A session's last use is written at most this often (not on every page).
TOUCH_SECONDS = 60.0
STRONG_TOKEN_BITS = 128
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
CACHED_ADDRESSES = 4096  # client addresses whose key (client_key) each worker keeps
CACHED_HOSTS = 64  # Host headers whose answer (is_allowed_host) each worker keeps (at most 64 header lines held)
KEPT_WAITS = 4096  # addresses whose wait (or none) each worker keeps between changes of the failures
RECHECK_SECONDS = 10.0  # a kept wait is read again after this long even when no worker changed the failures
CHANGES_SUFFIX = ".changes"  # beside the store: the count of changes to the failures (ChangeCounter)
COUNTER = struct.Struct("<Q")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS failures (address TEXT PRIMARY KEY, count INTEGER NOT NULL, blocked_until REAL NOT NULL);
"""


def read_or_create_secret(folder: Path) -> bytes:
    """The server's session secret in ``folder``, created with ``secrets`` on first use (mode 0600).

    The new secret is written to a temporary file and linked into place, which fails if another worker got
    there first: then that worker's secret is read, so all workers sign with the same one.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the sessions' journal lives here too
    path = folder / SECRET_FILE
    if not path.exists():
        temporary = folder / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(secrets.token_bytes(SECRET_BYTES))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"{path} holds {len(secret)} bytes, not a {SECRET_BYTES}-byte secret; delete it to make one")
    return secret


def token_bits(token: str) -> float:
    """A rough upper bound of a token's entropy: its length times log2 of the alphabet its characters come from."""
    alphabet = 0
    for characters, size in (
        (string.ascii_lowercase, 26),
        (string.ascii_uppercase, 26),
        (string.digits, 10),
    ):
        if any(c in characters for c in token):
            alphabet += size
    if any(not (c.isascii() and c.isalnum()) for c in token):
        alphabet += 33  # punctuation and the rest
    return len(token) * math.log2(alphabet) if alphabet else 0.0


def warn_about_weak_token(token: str | None, variable: str) -> float | None:
    """Log a warning when ``token`` holds fewer than 128 bits (by length and alphabet); return its estimate."""
    if not token:
        return None
    bits = token_bits(token)
    if bits < STRONG_TOKEN_BITS:
        log.warning(
            "the API token in %s holds about %d bits, fewer than %d: use a longer random one "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            variable,
            bits,
            STRONG_TOKEN_BITS,
        )
    return bits


def host_name(host: str) -> str:
    """The name in a Host header, without its port or brackets, lower case, without a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@functools.lru_cache(maxsize=CACHED_HOSTS)
def is_allowed_host(host: str, allowed: tuple[str, ...], token_set: bool) -> bool:
    """Whether a request sent with this Host header is answered.

    The loopback names always are; the names in ``allowed`` too (``*``: any). With nothing configured, any host
    is answered when a token protects the API, and only loopback names when none does: a page elsewhere cannot
    then reach an open API through a DNS name rebound to this machine. Asked on every request: the answers for
    recent Host headers are kept (reading one takes about 2 µs in a worker).
    """
    name = host_name(host)
    if name in LOOPBACK_NAMES:
        return True
    if allowed:
        return "*" in allowed or name in {host_name(entry) for entry in allowed}
    return token_set


@dataclass(frozen=True)
class Refusal:
    """An address that must wait before it may try again."""

    retry_after: int  # whole seconds


def wait_after(failures: int) -> float:
    """Seconds an address waits after its ``failures``-th failure in a row: none for the free ones, then doubling."""
    if failures <= FREE_FAILURES:
        return 0.0
    return float(min(FIRST_WAIT_SECONDS * 2 ** min(failures - FREE_FAILURES - 1, 20), LONGEST_WAIT_SECONDS))


class ChangeCounter:
    """A number in a small file that every process maps into its memory: whoever changes the failures adds one
    after committing, under an exclusive lock, so the number only grows; reading it takes no system call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(descriptor).st_size < COUNTER.size:  # a new file; never shorten one in use
                os.ftruncate(descriptor, COUNTER.size)
            self._mapped = mmap.mmap(descriptor, COUNTER.size)  # shared with the file, and kept across a fork
        finally:
            os.close(descriptor)

    def read(self) -> int:
        return int(COUNTER.unpack_from(self._mapped)[0])

    def add_one(self) -> None:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)  # a lock of its own, whatever else is open
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            COUNTER.pack_into(self._mapped, 0, COUNTER.unpack_from(self._mapped)[0] + 1)
        finally:
            os.close(descriptor)  # which unlocks


class AccessStore:
    """The live sessions and the failures per address, in one SQLite file all workers share.

    Whether an address must wait is asked on every request with a token. Each process keeps the answers it read,
    each with the number of ``ChangeCounter`` it read before them: a failure recorded or forgiven by any worker
    adds one to that number after its commit, so a kept answer is used only while no failure has changed since
    it was read (and for at most ``RECHECK_SECONDS``, for a change made to the file by hand).
    """

    def __init__(self, path: Path, idle_seconds: float) -> None:
        self.path = path
        self.idle_seconds = idle_seconds
        self._reader: tuple[int, sqlite3.Connection] | None = None  # (process id, connection) of ``read_one``
        self._reader_lock = threading.Lock()
        self._waits: dict[str, tuple[int, float, float | None]] = {}  # address: (count, read at, blocked until)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.connect() as connection:
            # Readers do not wait for a worker that writes (a failed try, a new session) with a write-ahead log.
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(SCHEMA)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        self.failure_changes = ChangeCounter(path.with_name(path.name + CHANGES_SUFFIX))

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            yield connection
        finally:
            connection.close()

    def read_one(self, query: str, parameters: tuple[object, ...]) -> tuple[Any, ...] | None:
        """The first row of a read-only ``query``, on a connection this process keeps open.

        Opening the file costs about 0.3 ms (the write-ahead log's shared memory is mapped each time), reading a
        row on an open connection a few microseconds. Each read is its own transaction, so it sees every change
        committed by any worker before it. A process forked from this one opens its own connection (SQLite's
        connections must not cross a fork).
        """
        with self._reader_lock:  # one statement at a time on the shared connection, whatever the worker's threads
            reader = self._reader
            if reader is None or reader[0] != os.getpid():
                connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
                reader = self._reader = (os.getpid(), connection)
            rows = reader[1].execute(query, parameters).fetchall()  # read to the end: no snapshot is kept open
        return rows[0] if rows else None

    def start_session(self, now: float | None = None) -> str:
        """A new live session's id (and the expired ones forgotten)."""
        now = time.time() if now is None else now
        session_id = secrets.token_urlsafe(32)
        with self.connect() as connection:
            connection.execute("DELETE FROM sessions WHERE last_seen < ?", (now - self.idle_seconds,))
            connection.execute("INSERT INTO sessions (id, last_seen) VALUES (?, ?)", (session_id, now))
        return session_id

    def is_live(self, session_id: str, now: float | None = None) -> bool:
        """Whether the session was started here, not ended, and used within the idle time; a use is recorded."""
        now = time.time() if now is None else now
        row = self.read_one("SELECT last_seen FROM sessions WHERE id = ?", (session_id,))
        if row is None:
            return False
        if row[0] < now - self.idle_seconds:
            with self.connect() as connection:
                connection.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return False
        if now - row[0] >= TOUCH_SECONDS:
            with self.connect() as connection:
                connection.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now, session_id))
        return True

    def end_session(self, session_id: str) -> None:
        with self.connect() as connection:
            connection.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def refusal(self, address: str, now: float | None = None) -> Refusal | None:
        """Why ``address`` may not try a token now (it failed too often, too recently); None when it may."""
        now = time.time() if now is None else now
        blocked_until = self.blocked_until(address)
        if blocked_until is None or blocked_until <= now:
            return None
        return Refusal(max(1, math.ceil(blocked_until - now)))

    def blocked_until(self, address: str) -> float | None:
        """Until when ``address`` was last told to wait (None: it never was, or was forgiven)."""
        count = self.failure_changes.read()  # before the table: a change committed after this read counts later
        kept = self._waits.get(address)
        if kept is not None and kept[0] == count and time.monotonic() - kept[1] < RECHECK_SECONDS:
            return kept[2]
        read_at = time.monotonic()
        row = self.read_one("SELECT blocked_until FROM failures WHERE address = ?", (address,))
        if len(self._waits) >= KEPT_WAITS:
            self._waits.clear()
        self._waits[address] = (count, read_at, None if row is None else float(row[0]))
        return self._waits[address][2]

    def record_failure(self, address: str, now: float | None = None) -> int:
        """Count one more failed try from ``address``; return how many it has made in a row."""
        now = time.time() if now is None else now
        with self.connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            # Addresses whose failures are long past are forgotten, so the table stays small.
            connection.execute("DELETE FROM failures WHERE blocked_until < ?", (now - LONGEST_WAIT_SECONDS,))
            row = connection.execute(
                "SELECT count, blocked_until FROM failures WHERE address = ?", (address,)
            ).fetchone()
            # Failures long past (the longest wait after the last one's) are forgiven.
            count = (row[0] if row and row[1] >= now - LONGEST_WAIT_SECONDS else 0) + 1
            connection.execute(
                "INSERT OR REPLACE INTO failures (address, count, blocked_until) VALUES (?, ?, ?)",
                (address, count, now + wait_after(count)),
            )
            connection.execute("COMMIT")
        self.failure_changes.add_one()  # after the commit: whoever reads the new number reads the new row
        return count

    def forget_failures(self, address: str) -> None:
        with self.connect() as connection:
            connection.execute("DELETE FROM failures WHERE address = ?", (address,))
        self.failure_changes.add_one()


def open_access(prod_deployment_path: Path, idle_hours: float) -> tuple[bytes, AccessStore]:
    """The session secret and the shared store, in ``<prod_deployment_path>/web_access``."""
    folder = prod_deployment_path / ACCESS_FOLDER
    try:
        return read_or_create_secret(folder), AccessStore(folder / STORE_FILE, idle_hours * 3600)
    except (OSError, sqlite3.Error, ValueError) as exc:
        reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        raise PipelineError(
            f"the web app's session secret and sign-in record in {folder} cannot be made or read ({reason}); "
            "the server needs to write that folder"
        ) from None


ACCESS_STATE = "risk_web_access"


@dataclass(frozen=True)
class WebAccess:
    """What ``create_app`` keeps in ``app.extensions[ACCESS_STATE]``: the session secret and the shared store."""

    secret: bytes
    store: AccessStore


@functools.lru_cache(maxsize=CACHED_ADDRESSES)
def client_key(address: str | None) -> str:
    """Whom a failed try is counted against: the client's IPv4 address, or its IPv6 /64 network (one host
    usually holds a whole /64, so counting single addresses would let it try without end). Asked on every
    request with a token: the answers for recent addresses are kept (parsing takes 3 µs for IPv4, 20 µs for IPv6)."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def refuse_if_waiting(store: AccessStore, address: str) -> None:
    """Answer 429 (with Retry-After) when ``address`` failed too often to try a token again yet."""
    refusal = store.refusal(address)
    if refusal is not None:
        raise TooManyRequests(
            f"too many wrong tokens from {address}: wait {refusal.retry_after} s before trying again",
            retry_after=refusal.retry_after,
        )


def count_failure(store: AccessStore, address: str, what: str) -> int:
    """Record and log one wrong token from ``address`` (``what``: where it was sent); the token is never logged."""
    failures = store.record_failure(address)
    log.warning("wrong token from %s (%s), %d in a row", address, what, failures)
    return failures
