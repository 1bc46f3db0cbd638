"""The default queue's worker, for the plain arq CLI: `arq workers.main.WorkerSettings`."""

from workers import settings_for_queue

WorkerSettings = settings_for_queue("default")
