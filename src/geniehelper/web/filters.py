"""The dashboard's job filters, from a query string or a form, to the `JobFilter` the CLI uses too.

Each bad value is refused with its field and reason (shown above the list), never guessed at.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from uuid import UUID

from geniehelper.ops.cli import JOB_STATUSES, parse_duration
from geniehelper.ops.jobs import JobFilter

FILTER_FIELDS = ("status", "job", "queue", "creator", "error", "older_than", "newer_than")

__all__ = ["FILTER_FIELDS", "JOB_STATUSES", "FilterError", "job_filter"]


class FilterError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def job_filter(params: Mapping[str, str]) -> JobFilter:
    given = {k: v.strip() for k, v in params.items() if k in FILTER_FIELDS and v.strip()}
    status = given.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise FilterError("status", f"{status!r} is not one of {', '.join(JOB_STATUSES)}")
    creator = None
    if "creator" in given:
        try:
            creator = UUID(given["creator"])
        except ValueError:
            raise FilterError("creator", f"{given['creator']!r} is not a uuid") from None
    ages: dict[str, float | None] = {}
    for name in ("older_than", "newer_than"):
        try:
            ages[name] = parse_duration(given[name]) if name in given else None
        except argparse.ArgumentTypeError as exc:
            raise FilterError(name, str(exc)) from None
    return JobFilter((status,) if status else (), given.get("job"), given.get("queue"), creator, given.get("error"),
                     ages["older_than"], ages["newer_than"])  # fmt: skip
