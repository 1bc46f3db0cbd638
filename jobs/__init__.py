"""Jobs: one module per job, each declaring its whole `JobDefinition` (payload, queue, policy, key,
subject, run, hooks). Nothing lists them: `geniehelper.runtime.registry.discover` collects every
definition declared in this package's modules (JOB_PACKAGES)."""
