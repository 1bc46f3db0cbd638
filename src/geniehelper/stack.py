"""Which servers a process talks to: the given URLs, or the running embedded stack."""

from __future__ import annotations

from geniehelper.embedded import EmbeddedStack, StackUrls
from geniehelper.settings import Settings


class NoServers(RuntimeError):
    pass


def resolve_urls(settings: Settings) -> StackUrls:
    """DATABASE_URL / REDIS_URL when set; otherwise the embedded stack that `up`/`services` runs."""
    if settings.database_url and settings.redis_url:
        return _given(settings)
    running = EmbeddedStack(settings.data_dir).running()
    if running is None:
        missing = " and ".join(n for n, v in (("DATABASE_URL", settings.database_url),
                                               ("REDIS_URL", settings.redis_url)) if not v)  # fmt: skip
        raise NoServers(
            f"{missing} not set and no embedded stack is running under {settings.data_dir}: "
            "start one with `geniehelper services` (or `geniehelper up`), or set the variable"
        )
    return _merged(settings, running)


def start_stack(settings: Settings, *, durable: bool = True) -> tuple[StackUrls, EmbeddedStack | None]:
    """Like resolve_urls, but starts the embedded servers that are needed and not running."""
    if settings.database_url and settings.redis_url:
        return _given(settings), None
    stack = EmbeddedStack(settings.data_dir, durable=durable)
    return _merged(settings, stack.start()), stack


def _given(settings: Settings) -> StackUrls:
    assert settings.database_url and settings.redis_url
    return StackUrls(
        settings.database_url, settings.redis_url, settings.migrate_database_url, settings.worker_database_url
    )


def _merged(settings: Settings, embedded: StackUrls) -> StackUrls:
    """The given URLs over the embedded stack's (a given DATABASE_URL brings its own migrate URL, if any)."""
    if settings.database_url:
        return StackUrls(
            settings.database_url, embedded.redis_url, settings.migrate_database_url, settings.worker_database_url
        )
    return StackUrls(
        embedded.database_url, settings.redis_url or embedded.redis_url, embedded.migrate_database_url,
        embedded.worker_database_url,
    )
