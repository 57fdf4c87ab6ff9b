"""The management paths as async Django views (also the URLconf): through the channel layer."""

from __future__ import annotations

from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

__all__ = ["post_connection", "post_tenant", "urlpatterns"]


async def post_connection(request: HttpRequest, cid: str) -> HttpResponse:
    """``POST /@connections/{channel name}``: ``channel_layer.send``."""
    await get_channel_layer().send(cid, {"type": "push", "text": request.body.decode()})
    return HttpResponse()


async def post_tenant(request: HttpRequest, tenant: str) -> HttpResponse:
    """``POST /@tenants/{tenant}/messages``: ``channel_layer.group_send``."""
    await get_channel_layer().group_send(tenant, {"type": "push", "text": request.body.decode()})
    return JsonResponse({"delivered": -1})


urlpatterns = [
    path("@connections/<str:cid>", post_connection),
    path("@tenants/<str:tenant>/messages", post_tenant),
]
