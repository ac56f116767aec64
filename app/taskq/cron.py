"""When a schedule fires: its slots, from a cron expression or a fixed period.

Cron expressions are evaluated by cronsim, which follows Debian cron, DST included: in a
timezone with daylight saving, a job at a fixed time inside the hour the clocks skip runs
right after the jump, and one inside the hour they repeat runs once, at its first
occurrence; jobs with a wildcard minute or hour follow real time. A 6-field expression
(seconds first) gets the same rules: its minutes come from the 5-field expression
without the seconds, and its seconds are offsets within each of those minutes.

`every` slots are multiples of the period since the Unix epoch, so every worker computes
the same slots whatever the timezone or the moment it started.
"""

from __future__ import annotations

import dataclasses
import zoneinfo
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError


class CronError(ValueError):
    """The expression or timezone is not usable; the message says why."""


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA timezone `name`; CronError when unknown."""
    if not name or len(name) > 64 or "\x00" in name or name.startswith(("/", ".")):
        raise CronError(f"unknown timezone {name!r}; use an IANA name such as Europe/Berlin")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(
            f"unknown timezone {name!r}; use an IANA name such as Europe/Berlin"
        ) from None


@dataclasses.dataclass(frozen=True)
class Slots:
    """The slots of one schedule: `cron` (5 or 6 fields) or `every` seconds, in `timezone`."""

    cron: str | None
    every: int | None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise CronError("give exactly one of cron and every")
        zone(self.timezone)
        if self.cron is not None:
            fields = self.cron.split()
            if len(fields) not in (5, 6):
                raise CronError(
                    f"a cron expression has 5 fields (or 6 with seconds first), got {len(fields)}"
                )
            try:
                CronSim(self.cron, datetime(2000, 1, 1))
            except CronSimError as exc:
                raise CronError(f"invalid cron expression: {exc}") from None
            except (ValueError, IndexError):
                raise CronError("invalid cron expression") from None
        elif self.every is not None and self.every < 1:
            raise CronError("every must be at least 1 second")

    @property
    def _fields(self) -> tuple[str, list[int]]:
        """(5-field expression, seconds within each of its minutes)."""
        assert self.cron is not None
        parts = self.cron.split()
        if len(parts) == 5:
            return " ".join(parts), [0]
        seconds = sorted(CronSim(" ".join(parts), datetime(2000, 1, 1)).seconds)
        return " ".join(parts[1:]), seconds

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after `moment` (aware), in UTC."""
        if self.every is not None:
            epoch = int(moment.timestamp() // self.every)
            return datetime.fromtimestamp((epoch + 1) * self.every, UTC)
        five, seconds = self._fields
        moment = moment.astimezone(UTC)  # compared in UTC: within one zone, fold is ignored
        # Minutes from one before `moment` (a slot may lie later within its minute), counted
        # in UTC: wall-clock arithmetic would be an hour off inside a repeated hour.
        start = moment.replace(second=0, microsecond=0) - timedelta(minutes=1)
        minutes = CronSim(five, start.astimezone(zone(self.timezone)))
        for minute in _bounded(minutes, moment):
            for second in seconds:
                slot = minute.astimezone(UTC) + timedelta(seconds=second)
                if slot > moment:
                    return slot
        raise CronError("the expression has no slot in the next 50 years")

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last slot at or before `moment` (aware), in UTC; None if there is none."""
        if self.every is not None:
            epoch = int(moment.timestamp() // self.every)
            return datetime.fromtimestamp(epoch * self.every, UTC)
        five, seconds = self._fields
        moment = moment.astimezone(UTC)
        # Reverse iteration from the next whole minute yields minutes before it.
        start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        minutes = CronSim(five, start.astimezone(zone(self.timezone)), reverse=True)
        try:
            for _ in range(100_000):
                minute = next(minutes)
                for second in reversed(seconds):
                    slot = minute.astimezone(UTC) + timedelta(seconds=second)
                    if slot <= moment:
                        return slot
        except StopIteration:
            return None
        return None


def _bounded(minutes: CronSim, after: datetime) -> list[datetime]:
    """The next few matching minutes (enough to find the first slot after `after`)."""
    out = []
    try:
        for _ in range(4):
            out.append(next(minutes))
            if out[-1].astimezone(UTC) > after:
                break
    except StopIteration:
        pass
    return out
