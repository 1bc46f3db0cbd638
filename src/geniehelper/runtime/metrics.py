"""A worker's Prometheus metrics: its job attempts by job and outcome, their durations, what runs now.

Served at `/metrics` on loopback when WORKER_METRICS_PORT is set (0: a free port; the address is
logged as `metrics.serving` and published in the worker's health key as `metrics_url`). Each worker
process has its own registry, so one host's workers are scraped one by one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from geniehelper.web.serve import serve_app

# From a no-op's few milliseconds to a media job's minutes.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.attempts = Counter(
            "geniehelper_job_attempts", "Job attempts finished, by job and outcome (completed, failed, retried, "
            "stale: its outcome did not land because another attempt had taken the job over).",
            ["job", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "geniehelper_job_duration_seconds", "How long job attempts ran, by job and outcome.", ["job", "outcome"],
            buckets=DURATION_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.running = Gauge("geniehelper_jobs_running", "Job attempts running now.", ["job"], registry=self.registry)

    def finished(self, job: str, outcome: str, took_ms: int | None) -> None:
        self.attempts.labels(job, outcome).inc()
        if took_ms is not None:
            self.duration.labels(job, outcome).observe(took_ms / 1000)

    def app(self) -> Starlette:
        async def metrics(_request: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])

    @asynccontextmanager
    async def serving(self, port: int) -> AsyncIterator[str]:
        """Serve /metrics on 127.0.0.1:`port` while the block runs; yields the URL."""
        async with serve_app(self.app(), "127.0.0.1", port) as base_url:
            yield f"{base_url}/metrics"
