"""Clients for creator platforms: the `PlatformClient` contract, its models and typed errors.

The sandbox platform (`geniehelper.platforms.sandbox`) is not re-exported: it pulls in the server
stack (starlette, uvicorn), which workers talking to real platforms do not need.
"""

from geniehelper.platforms.client import PlatformClient
from geniehelper.platforms.errors import (
    AuthExpired,
    OutcomeUnknown,
    PermanentPlatformError,
    PlatformError,
    RateLimited,
    TransientPlatformError,
)
from geniehelper.platforms.http import HttpPlatformClient, parse_retry_after
from geniehelper.platforms.models import (
    AccountInfo,
    AccountStats,
    Fan,
    Message,
    Page,
    PlatformModel,
    PostMetrics,
    PostToPublish,
    PublishedPost,
    SentMessage,
    Subscription,
    SubscriptionHistoryEvent,
    Transaction,
)

__all__ = [
    "AccountInfo",
    "AccountStats",
    "AuthExpired",
    "Fan",
    "HttpPlatformClient",
    "Message",
    "OutcomeUnknown",
    "Page",
    "PermanentPlatformError",
    "PlatformClient",
    "PlatformError",
    "PlatformModel",
    "PostMetrics",
    "PostToPublish",
    "PublishedPost",
    "RateLimited",
    "SentMessage",
    "Subscription",
    "SubscriptionHistoryEvent",
    "Transaction",
    "TransientPlatformError",
    "parse_retry_after",
]
