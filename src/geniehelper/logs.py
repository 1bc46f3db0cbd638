"""structlog set-up: JSON lines in production, a readable console in a terminal.

Every line carries the process role; inside a job the runtime binds job_id, job_name, attempt and
user_id with `structlog.contextvars`, so they appear on every line the job logs.
Event names are stable and dotted (`job.started`, `scheduler.tick`): grep and alert on them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from geniehelper.settings import Settings


def configure_logging(settings: Settings, role: str) -> None:
    use_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())

    def add_role(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("role", role)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_role,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if use_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    level = logging.getLevelNamesMapping()[settings.log_level]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (arq, asyncio, uvicorn) log through stdlib logging: route them through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per HTTP request is noise at INFO; platform calls are logged by the jobs that make them.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
