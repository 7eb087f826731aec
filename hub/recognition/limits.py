"""Per-token limits on recognition lookups: a rate limit, and a miss budget against ID enumeration.

A resident ID number is guessable: a district code and a birth date leave at most 1000
candidates (a 3-digit sequence; the check character follows). So each institution's token
gets two token buckets:

- **lookups**: every patient lookup takes one; ``burst`` of them may be spent at once and
  they refill at ``lookups_per_minute``. An empty bucket answers 429 with Retry-After.
- **misses**: a lookup by resident ID number that finds no patient in the index (the
  signature of enumeration) takes one; the bucket holds ``misses_per_hour`` and refills
  over an hour. A miss with the bucket empty suspends the token for ``suspend_minutes``
  and raises an alert in the access log. Re-issuing the token (a new token, a new bucket)
  lifts a suspension.

The buckets live in the server process and are written through to the
``recognition_limit_state`` table of the recognition index database (shared by every
worker, surviving restarts) at most once every ``sync_seconds`` per process, and at once
when a suspension starts: no commit per request. A sync merges what other workers spent in
the meantime, so several workers together may overspend by at most what they admit in one
sync interval; a crash loses at most that interval's counts.

Configured in region.yaml (all keys optional; the defaults are below)::

    recognition_limits:
      lookups_per_minute: 60
      burst: 20
      misses_per_hour: 20
      suspend_minutes: 60
      read_hours: 24           # a search lets the caller read that person's results by id for this long
      institutions:            # per-institution overrides, e.g. a large hospital
        city-first: {lookups_per_minute: 240, burst: 60, misses_per_hour: 60}
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import sqlalchemy as sa

from hub.region import Region
from hub.yamlio import ConfigError, LineDict

log = logging.getLogger("hub.recognition")

metadata = sa.MetaData()
limit_state = sa.Table(
    "recognition_limit_state", metadata,
    sa.Column("token", sa.String(64), primary_key=True),  # sha256 of the bearer token, never the token
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),  # epoch seconds at which the levels below were measured
    sa.Column("lookups", sa.Float, nullable=False),  # lookups left in the bucket
    sa.Column("misses", sa.Float, nullable=False),  # misses left in the budget
    sa.Column("suspended_until", sa.Float),  # epoch seconds; None: not suspended
)


@dataclass(frozen=True)
class Limits:
    """One institution's limits (the defaults are the region's unless region.yaml says otherwise)."""

    lookups_per_minute: float = 60.0
    burst: float = 20.0
    misses_per_hour: float = 20.0
    suspend_minutes: float = 60.0
    read_hours: float = 24.0  # how long a search lets the caller read the person's results by id

    @property
    def lookup_rate(self) -> float:  # per second
        return self.lookups_per_minute / 60.0

    @property
    def miss_rate(self) -> float:  # per second
        return self.misses_per_hour / 3600.0


@dataclass(frozen=True)
class LimitPolicy:
    default: Limits = field(default_factory=Limits)
    institutions: dict[str, Limits] = field(default_factory=dict)
    sync_seconds: float = 2.0

    def of(self, institution: str) -> Limits:
        return self.institutions.get(institution, self.default)


_KEYS = ("lookups_per_minute", "burst", "misses_per_hour", "suspend_minutes", "read_hours")


def _limits(node: LineDict, base: Limits, file: str, where: str) -> Limits:
    values = {}
    for key in node:
        if key not in _KEYS:
            raise ConfigError(file, node.line_of(key), f"{where}.{key}", "is not a known limit", ", ".join(_KEYS))
        v = node[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or not math.isfinite(v):
            raise ConfigError(file, node.line_of(key), f"{where}.{key}", f"{v!r} is not a positive number", "a number above 0")
        values[key] = float(v)
    limits = replace(base, **values)
    if limits.burst < 1:
        raise ConfigError(file, node.line_of("burst"), f"{where}.burst", "is below 1", "at least 1 lookup")
    return limits


def load_limits(region: Region) -> LimitPolicy:
    """The region's limits from region.yaml's ``recognition_limits``; errors name file, line and field."""
    node = region.recognition_limits
    if not node:
        return LimitPolicy()
    file = str(region.workspace / "region.yaml")
    top = LineDict({k: v for k, v in node.items() if k not in ("institutions", "sync_seconds")})
    top.line, top.key_lines = node.line, node.key_lines
    default = _limits(top, Limits(), file, "recognition_limits")
    sync = node.get("sync_seconds", 2.0)
    if isinstance(sync, bool) or not isinstance(sync, int | float) or not 0 <= sync <= 60:
        raise ConfigError(file, node.line_of("sync_seconds"), "recognition_limits.sync_seconds", f"{sync!r}", "seconds between 0 and 60")
    per = {}
    overrides = node.get("institutions") or LineDict()
    if not isinstance(overrides, LineDict):
        raise ConfigError(file, node.line_of("institutions"), "recognition_limits.institutions", "is not a mapping", "institution id: {limit: value}")
    known = {i.id for i in region.institutions}
    for inst, sub in overrides.items():
        where = f"recognition_limits.institutions.{inst}"
        if inst not in known:
            raise ConfigError(file, overrides.line_of(inst), where, "is not an institution of the region", ", ".join(sorted(known)))
        if not isinstance(sub, LineDict):
            raise ConfigError(file, overrides.line_of(inst), where, "is not a mapping", "{limit: value}")
        per[inst] = _limits(sub, default, file, where)
    return LimitPolicy(default, per, float(sync))


@dataclass(frozen=True)
class Refusal:
    """A lookup the limits refuse: why (for the access log) and when to retry (seconds)."""

    cause: str  # "rate limit" | "token suspended"
    retry_after: int
    text: str


@dataclass
class _Bucket:
    institution: str
    at: float
    lookups: float
    misses: float
    suspended_until: float | None = None
    spent_lookups: float = 0.0  # since the last sync
    spent_misses: float = 0.0
    dirty: bool = False

    def refill(self, limits: Limits, now: float) -> None:
        elapsed = max(0.0, now - self.at)
        self.lookups = min(limits.burst, self.lookups + elapsed * limits.lookup_rate)
        self.misses = min(limits.misses_per_hour, self.misses + elapsed * limits.miss_rate)
        self.at = max(self.at, now)


class Limiter:
    """The token buckets of every token the server has seen, written through to the index database."""

    def __init__(self, policy: LimitPolicy, engine: sa.Engine, clock: Callable[[], float] = time.time):
        self.policy, self.engine, self.clock = policy, engine, clock
        metadata.create_all(engine)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._last_sync = clock()

    def _fresh(self, institution: str, now: float) -> _Bucket:
        limits = self.policy.of(institution)
        return _Bucket(institution, now, limits.burst, limits.misses_per_hour)

    def _bucket(self, token: str, institution: str, now: float) -> _Bucket:
        b = self._buckets.get(token)
        if b is None:  # first sight in this process: start from what other workers or earlier runs left
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(limit_state).where(limit_state.c.token == token)).first()
            b = self._fresh(institution, now) if row is None else _Bucket(
                institution, row.at, row.lookups, row.misses, row.suspended_until)
            self._buckets[token] = b
        b.refill(self.policy.of(institution), now)
        return b

    def admit(self, token: str, institution: str, take: bool = True) -> Refusal | None:
        """Take one lookup from the token's bucket; a Refusal when it is suspended or the bucket is empty.

        With ``take=False`` only a suspension refuses and nothing is taken (recording a decision).
        """
        now = self.clock()
        limits = self.policy.of(institution)
        with self._lock:
            self._maybe_sync(now)  # before deciding: what other workers spent counts
            b = self._bucket(token, institution, now)
            refusal = None
            if b.suspended_until is not None and now < b.suspended_until:
                wait = math.ceil(b.suspended_until - now)
                refusal = Refusal("token suspended", wait, (
                    f"this token is suspended for {wait} s: too many lookups by resident ID number found no patient "
                    "(the pattern of enumerating ID numbers); the operator has been alerted and can lift it by re-issuing the token"))
            elif not take:
                pass
            elif b.lookups < 1:
                wait = max(1, math.ceil((1 - b.lookups) / limits.lookup_rate))
                refusal = Refusal("rate limit", wait, (
                    f"too many lookups: this institution may make {limits.lookups_per_minute:g} a minute "
                    f"(bursts of {limits.burst:g}); retry after {wait} s"))
            else:
                b.lookups -= 1
                b.spent_lookups += 1
                b.dirty = True
            if self.policy.sync_seconds == 0:
                self._sync(now)
            return refusal

    def miss(self, token: str, institution: str) -> float | None:
        """Count a lookup by resident ID number that found no patient.

        Returns the end of the suspension (epoch seconds) when this miss exceeds the budget and
        suspends the token; the caller raises the alert. The suspension is written at once.
        """
        now = self.clock()
        limits = self.policy.of(institution)
        with self._lock:
            self._maybe_sync(now)
            b = self._bucket(token, institution, now)
            b.dirty = True
            if b.misses >= 1:
                b.misses -= 1
                b.spent_misses += 1
                return None  # written by the next sync: no extra write that would make a miss answer slower
            b.spent_misses += b.misses
            b.misses = 0.0
            b.suspended_until = max(b.suspended_until or 0.0, now + limits.suspend_minutes * 60)
            self._sync(now)
            return b.suspended_until

    def flush(self) -> None:
        """Write every bucket through now (the server calls this on shutdown)."""
        with self._lock:
            self._sync(self.clock())

    def _maybe_sync(self, now: float) -> None:
        if now - self._last_sync >= self.policy.sync_seconds:
            self._sync(now)

    def _sync(self, now: float) -> None:
        """Merge this process's spending since the last sync into the stored buckets, in one transaction."""
        self._last_sync = now
        dirty = {t: b for t, b in self._buckets.items() if b.dirty}
        try:
            with self.engine.begin() as conn:
                stored = {r.token: r for r in conn.execute(sa.select(limit_state).where(limit_state.c.token.in_(list(self._buckets))))} if self._buckets else {}
                for token, b in self._buckets.items():
                    row = stored.get(token)
                    if row is not None:  # what other workers left, minus what this one spent since
                        merged = _Bucket(b.institution, row.at, row.lookups, row.misses, row.suspended_until)
                        merged.refill(self.policy.of(b.institution), now)
                        b.lookups = max(0.0, merged.lookups - b.spent_lookups)
                        b.misses = max(0.0, merged.misses - b.spent_misses)
                        b.suspended_until = max(filter(None, (b.suspended_until, merged.suspended_until)), default=None)
                        b.at = now
                    if token not in dirty:
                        continue
                    values = {"institution": b.institution, "at": b.at, "lookups": b.lookups, "misses": b.misses,
                              "suspended_until": b.suspended_until}
                    if row is None:
                        conn.execute(limit_state.insert().values(token=token, **values))
                    else:
                        conn.execute(limit_state.update().where(limit_state.c.token == token).values(**values))
        except sa.exc.SQLAlchemyError as exc:  # keep limiting from memory; the next sync retries
            log.warning("recognition limits: could not write the limit state (%s)", type(exc).__name__)
            return
        for b in dirty.values():
            b.spent_lookups = b.spent_misses = 0.0
            b.dirty = False


def limit_states(engine: sa.Engine, policy: LimitPolicy, current: dict[str, str], now: float | None = None) -> list[dict]:
    """The stored buckets of the current tokens (``current``: token hash -> institution), refilled to now."""
    now = time.time() if now is None else now
    metadata.create_all(engine)
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(limit_state).where(limit_state.c.token.in_(list(current))))) if current else []
    out = []
    for r in rows:
        limits = policy.of(r.institution)
        b = _Bucket(r.institution, r.at, r.lookups, r.misses, r.suspended_until)
        b.refill(limits, now)
        suspended = b.suspended_until is not None and b.suspended_until > now
        out.append({"institution": current[r.token], "lookups_left": math.floor(b.lookups), "burst": limits.burst,
                    "misses_left": math.floor(b.misses), "misses_per_hour": limits.misses_per_hour,
                    "suspended_until": b.suspended_until if suspended else None})
    return sorted(out, key=lambda s: s["institution"])
