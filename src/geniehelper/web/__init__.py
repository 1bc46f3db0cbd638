"""HTTP: loopback serving (serve.py), the API (api.py, openapi.py) and its process (server.py)."""


class WebConfigError(RuntimeError):
    """The web process cannot start as configured (said in one line)."""
