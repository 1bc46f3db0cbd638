"""The default queue's worker, for the plain arq CLI: `arq workers.main.WorkerSettings`.

arq's CLI configures only the standard library's logging, so this module configures ours
(LOG_FORMAT, LOG_LEVEL) as `geniehelper worker` does.
"""

from geniehelper.logs import configure_logging
from geniehelper.settings import load_settings
from workers import settings_for_queue

_settings = load_settings()
configure_logging(_settings, "worker")
WorkerSettings = settings_for_queue("default", _settings)
