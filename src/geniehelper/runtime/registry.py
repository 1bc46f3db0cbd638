"""The jobs a process knows, by name: collected from job modules at start-up, passed in, never global.

`discover(["jobs"])` imports every module of the named packages and collects the `JobDefinition`s
they declare at module level. The packages are configuration (`JOB_PACKAGES`), so the core never
imports `jobs/` itself, and a new job is one new module there: nothing else lists it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from geniehelper.runtime.definition import AnyJob, JobDefinition, UnknownJob


class JobRegistry:
    def __init__(self, definitions: Iterable[AnyJob]) -> None:
        self._jobs: dict[str, AnyJob] = {}
        for definition in definitions:
            if definition.name in self._jobs and self._jobs[definition.name] is not definition:
                raise ValueError(f"job {definition.name!r} is defined twice")
            self._jobs[definition.name] = definition

    def __getitem__(self, name: str) -> AnyJob:
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJob(name, self._jobs) from None

    def __iter__(self) -> Iterator[AnyJob]:
        return iter(self._jobs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def for_queue(self, queue: str) -> list[AnyJob]:
        return [job for job in self._jobs.values() if job.queue == queue]


def discover(packages: Sequence[str]) -> JobRegistry:
    """Every JobDefinition declared at module level in the modules of `packages`."""
    found: list[AnyJob] = []
    for package_name in packages:
        package = importlib.import_module(package_name)
        modules: list[Any] = [package]
        for info in pkgutil.iter_modules(getattr(package, "__path__", []), prefix=f"{package_name}."):
            modules.append(importlib.import_module(info.name))
        for module in modules:
            found += [value for value in vars(module).values() if isinstance(value, JobDefinition)]
    return JobRegistry(found)
