"""The on-call surface: alerts and their rules and deliveries, and the queries behind the ops CLI.

Schedulers (job_monitor) and the CLI use it; it uses the runtime's records (`media_jobs`) and
health keys, never job code.
"""
