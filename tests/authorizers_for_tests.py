"""Authorizer functions for the tests, in Lambda's ``(event, context)`` form.

The token (``event["authorizationToken"]``, the first identity source) says what to answer:
``allow:<tenant>``, ``deny``, ``unauthorized``, ``boom``, ``not-a-policy``, ``nested``,
``no-tenant``, ``long-tenant``, ``slow`` and ``wrong-arn``. Every call is recorded in
``CALLS`` (in-process nodes), so tests can count calls and read the exact event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

CALLS: list[dict[str, Any]] = []


def policy(effect: str, resource: str, context: Any, principal: Any = "user-1") -> dict[str, Any]:
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
        "context": context,
    }


def _answer(event: dict[str, Any], record: bool = True) -> Any:
    if record:
        CALLS.append(event)
    token: str = event["authorizationToken"]
    arn = event["methodArn"]
    kind, _, tenant = token.partition(":")
    if kind == "allow":
        return policy("Allow", arn, {"tenant": tenant, "role": "admin", "seats": 3, "beta": True})
    if kind == "deny":
        return policy("Deny", arn, {"tenant": "t"})
    if kind == "unauthorized":
        raise Exception("Unauthorized")  # AWS's convention: the message is the signal
    if kind == "boom":
        raise RuntimeError("secret internal detail")
    if kind == "not-a-policy":
        return {"statusCode": 401}
    if kind == "nested":
        return policy("Allow", arn, {"tenant": "t", "roles": ["a", "b"]})
    if kind == "no-tenant":
        return policy("Allow", arn, {"role": "admin"})
    if kind == "long-tenant":
        return policy("Allow", arn, {"tenant": "t" * 257})
    if kind == "slow":  # answered too late to count
        return policy("Allow", arn, {"tenant": "t"})
    if kind == "wrong-arn":
        return policy("Allow", arn.rsplit("/", 1)[0] + "/*/*", {"tenant": "t"})  # REST's shape
    raise AssertionError(f"unknown test token {token!r}")


async def decide(event: dict[str, Any], context: Any) -> Any:
    if event["authorizationToken"] == "slow":
        CALLS.append(event)
        await asyncio.sleep(30)
        return _answer(event, record=False)
    return _answer(event)


def decide_sync(event: dict[str, Any], context: Any) -> Any:
    if event["authorizationToken"] == "slow":
        CALLS.append(event)
        time.sleep(3)  # past the tests' handler_timeout_s; the abandoned thread ends on its own
        # recorded once, on arrival: the abandoned thread ends seconds later, inside another test
        return _answer(event, record=False)
    return _answer(event)
