"""GenieHelper job-worker platform: the core package (settings, database, queue, domains, clients)."""

__version__ = "0.1.0"
