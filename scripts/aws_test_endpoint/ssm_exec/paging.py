"""MaxResults / NextToken paging, as the SSM list calls do it."""

from __future__ import annotations

from typing import Any

from .errors import SSMError


def _page(
    items: list[Any], max_results: Any, next_token: Any, default: int, lo: int, hi: int
) -> tuple[list[Any], str | None]:
    n = default if max_results is None else int(max_results)
    if not lo <= n <= hi:
        raise SSMError("ValidationException", f"MaxResults must be between {lo} and {hi}")
    try:
        start = int(next_token) if next_token else 0
    except ValueError:
        raise SSMError("InvalidNextToken", "The specified token isn't valid.") from None
    page = items[start : start + n]
    return page, (str(start + n) if start + n < len(items) else None)
