"""HTTP serving: loopback servers for the sandbox platform, metrics and (next) the dashboard."""
