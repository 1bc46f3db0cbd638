"""The sandbox's HTTP API: the /v1 routes `HttpPlatformClient` speaks and the loopback-only /admin routes."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geniehelper.platforms.models import (
    AccountInfo,
    AccountStats,
    Message,
    PostMetrics,
    PostToPublish,
    PublishedPost,
    SentMessage,
)
from geniehelper.platforms.sandbox.accounts import Account, MessageToSend, NewAccount, StoredPost, StoredSend
from geniehelper.platforms.sandbox.evolve import AdvanceSpec
from geniehelper.platforms.sandbox.faults import FaultSpec
from geniehelper.platforms.sandbox.platform import SandboxPlatform
from geniehelper.platforms.sandbox.wire import ApiError, admin, dump, idempotency_key, json_body, validated


def routes(platform: SandboxPlatform) -> list[Route]:
    h = _Handlers(platform)
    api = platform.api
    return [
        Route("/v1/me", api(h._me), methods=["GET"]),
        Route("/v1/posts", api(h._create_post), methods=["POST"]),
        Route("/v1/posts", api(h._list_posts), methods=["GET"]),
        Route("/v1/posts/{post_id}/metrics", api(h._post_metrics), methods=["GET"]),
        Route("/v1/stats", api(h._stats), methods=["GET"]),
        Route("/v1/fans", api(h._list_fans), methods=["GET"]),
        Route("/v1/subscriptions", api(h._list_subscriptions), methods=["GET"]),
        Route("/v1/subscriptions/history", api(h._list_subscription_history), methods=["GET"]),
        Route("/v1/transactions", api(h._list_transactions), methods=["GET"]),
        Route("/v1/messages", api(h._list_messages), methods=["GET"]),
        Route("/v1/messages", api(h._send_message), methods=["POST"]),
        Route("/admin/accounts", admin(h._admin_create_account), methods=["POST"]),
        Route("/admin/accounts/{account_id}/expire-token", admin(h._admin_expire_token), methods=["POST"]),
        Route("/admin/accounts/{account_id}/rotate-token", admin(h._admin_rotate_token), methods=["POST"]),
        Route("/admin/accounts/{account_id}/advance", admin(h._admin_advance), methods=["POST"]),
        Route("/admin/accounts/{account_id}/counts", admin(h._admin_counts), methods=["GET"]),
        Route("/admin/accounts/{account_id}/posts", admin(h._admin_posts), methods=["GET"]),
        Route("/admin/faults", admin(h._admin_add_fault), methods=["POST"]),
        Route("/admin/faults", admin(h._admin_clear_faults), methods=["DELETE"]),
        Route("/admin/requests", admin(h._admin_requests), methods=["GET"]),
    ]


class _Handlers:
    def __init__(self, platform: SandboxPlatform) -> None:
        self.platform = platform

    async def _me(self, _request: Request, account: Account) -> Response:
        return dump(AccountInfo(account_id=account.account_id, username=account.username))

    async def _list_fans(self, request: Request, account: Account) -> Response:
        return self.platform.page(request, account.fans)

    async def _list_subscriptions(self, request: Request, account: Account) -> Response:
        return self.platform.page(request, account.subscriptions)

    async def _list_subscription_history(self, request: Request, account: Account) -> Response:
        return self.platform.page(request, account.history)

    async def _list_transactions(self, request: Request, account: Account) -> Response:
        return self.platform.page(request, account.transactions)

    async def _list_messages(self, request: Request, account: Account) -> Response:
        return self.platform.page(request, account.messages)

    async def _create_post(self, request: Request, account: Account) -> Response:
        key = idempotency_key(request)
        content = validated(PostToPublish, await json_body(request))
        # No await from here on: the check and the insert are atomic on the event loop.
        existing = account.posts_by_key.get(key)
        if existing is not None:
            if existing.content != content:
                raise ApiError(422, "idempotency_key_reused", "key was used for a different post")
            return dump(existing.post, 200)
        now_s = self.platform.clock()
        post = PublishedPost(
            external_post_id=f"post_{next(self.platform.ids):06d}",
            created_at=datetime.fromtimestamp(now_s, UTC),
            idempotency_key=key,
        )
        stored = StoredPost(post=post, content=content, created_at_s=now_s)
        account.posts.append(stored)
        account.posts_by_key[key] = stored
        return dump(post, 201)

    async def _list_posts(self, request: Request, account: Account) -> Response:
        key = request.query_params.get("idempotency_key")
        posts = [s.post for s in account.posts if key is None or s.post.idempotency_key == key]
        return self.platform.page(request, posts)

    async def _post_metrics(self, request: Request, account: Account) -> Response:
        post_id = request.path_params["post_id"]
        stored = next((s for s in account.posts if s.post.external_post_id == post_id), None)
        if stored is None:
            raise ApiError(404, "post_not_found", f"no post {post_id!r}")
        age_h = max(0.0, self.platform.clock() - stored.created_at_s) / 3_600
        views = math.floor(age_h * self.platform.views_per_hour)
        return dump(
            PostMetrics(
                external_post_id=post_id,
                views=views,
                likes=views // 10,
                comments=views // 50,
                as_of=self.platform.now(),
            )
        )

    async def _stats(self, _request: Request, account: Account) -> Response:
        now = self.platform.now()
        age_h = max(0.0, self.platform.clock() - account.created_at_s) / 3_600
        active = sum(1 for s in account.subscriptions.iter_json() if s["status"] == "active")
        return dump(
            AccountStats(
                followers=account.base_followers
                + len(account.fans)
                + math.floor(age_h * self.platform.followers_per_hour),
                subscribers=active + math.floor(age_h * self.platform.subscribers_per_hour),
                posts=len(account.posts),
                as_of=now,
            )
        )

    async def _send_message(self, request: Request, account: Account) -> Response:
        key = idempotency_key(request)
        wanted = validated(MessageToSend, await json_body(request))
        existing = account.sends_by_key.get(key)
        if existing is not None:
            if existing.request != wanted:
                raise ApiError(422, "idempotency_key_reused", "key was used for a different message")
            return dump(existing.sent, 200)
        if not account.has_fan(wanted.fan_id):
            raise ApiError(404, "fan_not_found", f"no fan {wanted.fan_id!r}")
        now = self.platform.now()
        message_id = f"msg_{next(self.platform.ids):06d}"
        sent = SentMessage(message_id=message_id, fan_id=wanted.fan_id, created_at=now, idempotency_key=key)
        account.messages.append(
            Message(message_id=message_id, fan_id=wanted.fan_id, direction="out", text=wanted.text, created_at=now)
        )
        account.sends_by_key[key] = StoredSend(sent=sent, request=wanted)
        return dump(sent, 201)

    # --- admin handlers ----------------------------------------------------------------------------

    async def _admin_create_account(self, request: Request) -> Response:
        account_id, token = self.platform.create_account(validated(NewAccount, await json_body(request)))
        return JSONResponse({"account_id": account_id, "token": token}, status_code=201)

    async def _admin_expire_token(self, request: Request) -> Response:
        account_id = request.path_params["account_id"]
        self.platform.expire_token(account_id)
        return JSONResponse({"account_id": account_id, "expired": True})

    async def _admin_rotate_token(self, request: Request) -> Response:
        account_id = request.path_params["account_id"]
        return JSONResponse({"account_id": account_id, "token": self.platform.rotate_token(account_id)})

    async def _admin_posts(self, request: Request) -> Response:
        account = self.platform.account(request.path_params["account_id"])
        items = [
            {
                **stored.post.model_dump(mode="json"),
                "text": stored.content.text,
                "media_urls": list(stored.content.media_urls),
            }
            for stored in account.posts
        ]
        return JSONResponse({"items": items})

    async def _admin_add_fault(self, request: Request) -> Response:
        fault_id = self.platform.add_fault(validated(FaultSpec, await json_body(request)))
        return JSONResponse({"fault_id": fault_id}, status_code=201)

    async def _admin_clear_faults(self, _request: Request) -> Response:
        return JSONResponse({"cleared": self.platform.clear_faults()})

    async def _admin_requests(self, _request: Request) -> Response:
        return JSONResponse({"counts": self.platform.request_counts()})

    async def _admin_advance(self, request: Request) -> Response:
        account_id = request.path_params["account_id"]
        spec = validated(AdvanceSpec, await json_body(request))
        return JSONResponse(self.platform.advance(account_id, spec).as_dict())

    async def _admin_counts(self, request: Request) -> Response:
        return JSONResponse(self.platform.counts(request.path_params["account_id"]))
