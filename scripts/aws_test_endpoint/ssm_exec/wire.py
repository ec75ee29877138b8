"""Times as the SSM API prints them."""

from __future__ import annotations

import datetime


def _iso(dt: datetime.datetime | None) -> str:
    if dt is None:
        return ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _duration(seconds: float) -> str:
    """ISO 8601 duration as SSM prints ExecutionElapsedTime, e.g. PT0.153S, PT1M2.5S."""
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s = rem / 1000
    out = "PT"
    if h:
        out += f"{h}H"
    if m:
        out += f"{m}M"
    if s or not (h or m):
        out += f"{s:.3f}".rstrip("0").rstrip(".") + "S"
    return out
