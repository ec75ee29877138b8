"""Expiry of presigned S3 requests, as S3 enforces it (moto does not).

* A presigned URL (SigV4 query: ``X-Amz-Date`` + ``X-Amz-Expires``) used after its expiry is refused with 403
  ``AccessDenied`` "Request has expired".
* A URL signed with temporary credentials (``X-Amz-Security-Token``) dies with the session, even when its own
  expiry is later ("Sharing objects with presigned URLs", Amazon S3 User Guide: "If you created a presigned URL
  using a temporary token, then the URL expires when the token expires"): 400 ``ExpiredToken`` "The provided
  token has expired." The endpoint cannot know when a session ends, so a test tells it:
  ``POST /_sortie/sessions {"token": ..., "expires_in": SECONDS}``.
"""

from __future__ import annotations

import calendar
import time
from typing import Any
from urllib.parse import parse_qs


def refusal(environ: dict[str, Any], sessions: dict[str, float]) -> tuple[int, str, str] | None:
    """(status, code, message) when S3 would refuse this presigned request for its age; None otherwise."""
    query = parse_qs(environ.get("QUERY_STRING", "") or "")
    expires = query.get("X-Amz-Expires", [""])[0]
    signed = query.get("X-Amz-Date", [""])[0]
    if not expires or not signed:
        return None
    try:
        signed_at = calendar.timegm(time.strptime(signed, "%Y%m%dT%H%M%SZ"))
        valid_for = int(expires)
    except ValueError:
        return 403, "AuthorizationQueryParametersError", "X-Amz-Date or X-Amz-Expires is malformed"
    now = time.time()
    if now > signed_at + valid_for:
        return 403, "AccessDenied", "Request has expired"
    token = query.get("X-Amz-Security-Token", [""])[0]
    if token and token in sessions and now > sessions[token]:
        return 400, "ExpiredToken", "The provided token has expired."
    return None
