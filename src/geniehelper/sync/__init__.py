"""Keeping the data model fed from the platforms: one scrape of a connection (`sync.scrape`) and
the incremental fan sync (`sync.fans`); `sync.cli` is the `geniehelper fans link|unlink` command.

Services over a `PlatformClient` and a transaction factory the caller gives (a job passes its
fenced `ctx.creator_tx`): they own their transactions, the SQL lives in `geniehelper.domain`
(`scraping`, `fan_sync`). They import the domain and platform packages only, never jobs or schedulers.
"""
