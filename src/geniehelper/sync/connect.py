"""A platform client for one stored connection: its platform's registered address, its decrypted token."""

from __future__ import annotations

import httpx

from geniehelper.crypto import CredentialCipher
from geniehelper.domain import platform as connections
from geniehelper.domain.platform import PlatformConnection
from geniehelper.platforms import HttpPlatformClient
from geniehelper.settings import Settings


def platform_client(
    settings: Settings, cipher: CredentialCipher, http: httpx.AsyncClient, connection: PlatformConnection
) -> HttpPlatformClient:
    """Raises LookupError when the platform has no registered address (checked before the token is
    decrypted: it goes nowhere unregistered) and CredentialError when the token cannot be read."""
    api_url = settings.platform_api_url(connection.platform)
    token = connections.decrypt_token(cipher, connection)
    return HttpPlatformClient(api_url, token, http, timeout_s=settings.platform_timeout_s)
