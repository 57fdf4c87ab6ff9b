"""The operator console: pages and a JSON API under ``/console`` on the management port.

The management edge hands every request whose path starts with ``/console`` to
:class:`Console` (after its Host check, instead of its SigV4 and Origin checks). Routes
(docs/console.md has the API):

=======  ========================================  =========================================
GET      /console                                  the page (the login form without a session)
POST     /console/login                            the login form: 303 to /console, 401, 429
GET      /console/static/{file}                    the page's script, styles and chart library
POST     /console/api/login                        ``{"password": ...}`` -> 204 + cookie, 401, 429
POST     /console/api/logout                       -> 204
GET      /console/api/session                      ``{"csrf", "node", "expiresAt"}``
GET      /console/api/overview?since=              nodes, totals, the cluster's samples
GET      /console/api/tenants?sort=                tenants by connections / traffic / throttled
GET      /console/api/tenants/{t}                  plan and usage today
GET      /console/api/tenants/{t}/connections      one page (?limit=&nextToken=)
GET      /console/api/connections/{id}             the whole record, on any node
POST     /console/api/connections/{id}/messages    the body as one frame -> 200
DELETE   /console/api/connections/{id}             close with 1000 -> 204
GET      /console/api/failures                     the last 200, all nodes
=======  ========================================  =========================================

Every API call needs the session cookie (401 without); every POST and DELETE but the login
also needs the session's CSRF token in ``X-CSRF-Token`` (403 without). A request whose
``Origin`` is not the console's own is refused 403. Every answer forbids framing and
inline script (Content-Security-Policy), so even a rendering bug could not run a client's
text; the page renders every value with ``textContent``.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import orjson

from ..auth import MAX_TENANT_CHARS
from ..errors import BadRequestError, ManagementError, NotFoundError, PayloadTooLargeError
from ..http import Request, Response
from ..ids import is_connection_id
from . import views
from .access import Lockout, Session, Sessions, password_matches, session_key

if TYPE_CHECKING:
    from ..gateway import Gateway

__all__ = ["Console", "is_console_path"]

log = logging.getLogger("wsgateway.console")

_JSON = "application/json"
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = [("Content-Security-Policy", _CSP), ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"), ("Referrer-Policy", "same-origin"), ("Cache-Control", "no-store")]
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
_PAGES = ("index.html", "login.html")
_STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_WRONG = "Wrong password."
_LOCKED = "Too many wrong passwords from your address: try again in a minute."


def is_console_path(raw_path: str) -> bool:
    return raw_path == "/console" or raw_path.startswith("/console/")


def _load_static() -> dict[str, tuple[bytes, str]]:
    """Every file of ``static/``, read once: name -> (bytes, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    for item in resources.files(__package__).joinpath("static").iterdir():
        if item.is_file():
            suffix = item.name[item.name.rfind("."):]
            files[item.name] = (item.read_bytes(), _TYPES.get(suffix, "application/octet-stream"))
    return files


class Console:
    """The console of one node; ``password`` None leaves it open (loopback only: the config
    refuses that anywhere else)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        cfg = gateway.config.console
        self._password = cfg.password
        self.sessions = Sessions(cfg.session_s, session_key())
        self.lockout = Lockout()
        self._static = _load_static()
        self.port = 0  # the management port, once listening: names the cookie

    @property
    def cookie_name(self) -> str:
        # Per port: browsers share cookies between the ports of one host.
        return f"wsgw_console_{self.port}"

    # ---------------------------------------------------------------- entry points

    def check_head(self, request: Request) -> Response | None:
        """Refuse from the head what comes from another origin (403)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in _own_origins(request):
            log.info("console request from %s refused: Origin %r", request.peer, origin[:80])
            return _json(403, {"message": "Forbidden: cross-origin request"})
        return None

    async def handle(self, request: Request) -> Response:
        """Answer one console request; never raises."""
        try:
            response = await self._route(request)
        except ManagementError as exc:
            message = exc.message or ("No such connection on any node" if exc.status == 410 else exc.error_type)
            response = _json(exc.status, {"message": message})
        except Exception:
            log.exception("console request failed: %s %s", request.method, request.raw_path)
            response = _json(500, {"message": "Internal server error"})
        response.headers.extend(_HEADERS)
        return response

    # ---------------------------------------------------------------- routing

    async def _route(self, request: Request) -> Response:
        parts = request.raw_path.split("/")[2:]  # after "/console"
        method = request.method
        if not parts or parts == [""]:
            if method != "GET":
                raise NotFoundError("Not found")
            return self._page(request)
        if parts[0] == "static" and len(parts) == 2 and method == "GET":
            return self._asset(parts[1])
        if parts == ["login"] and method == "POST":
            return self._form_login(request)
        if parts[0] != "api" or len(parts) < 2:
            raise NotFoundError("Not found")
        if parts[1:] == ["login"] and method == "POST":
            return self._api_login(request)
        session = self.sessions.get(self._cookie(request))
        if session is None:
            return _json(401, {"message": "Log in first"})
        if method in _STATE_CHANGING and not session.csrf_matches(request.headers.get("X-CSRF-Token")):
            log.info("console %s %s from %s refused: no or wrong CSRF token", method, request.raw_path, request.peer)
            return _json(403, {"message": "Forbidden: missing or wrong CSRF token"})
        return await self._api(request, [unquote(p) for p in parts[1:]], session)

    async def _api(self, request: Request, parts: list[str], session: Session) -> Response:
        """``parts``: the decoded path segments after ``/console/api``."""
        method, head = request.method, parts[0]
        query = dict(parse_qsl(request.raw_query, keep_blank_values=True))
        if len(parts) == 1:
            return await self._api_root(request, head, query, session)
        if head == "tenants" and method == "GET" and len(parts) <= 3:
            return await self._api_tenant(parts[1:], query)
        if head == "connections" and len(parts) <= 3:
            return await self._api_connection(request, parts[1:])
        raise NotFoundError(f"No console API {method} {'/'.join(parts)}")

    async def _api_root(self, request: Request, head: str, query: dict[str, str], session: Session) -> Response:
        gateway, method = self.gateway, request.method
        if (method, head) == ("GET", "session"):
            return _json(200, {"csrf": session.csrf, "node": gateway.node_id, "expiresAt": session.expires_at})
        if (method, head) == ("POST", "logout"):
            self.sessions.close(self._cookie(request))
            return Response(204, b"", [("Set-Cookie", self._cookie_header(request, "", 0))])
        if (method, head) == ("GET", "overview"):
            return _json(200, await views.overview(gateway, _number(query.get("since", "0"), "since")))
        if (method, head) == ("GET", "failures"):
            return _json(200, await views.failures(gateway))
        if (method, head) == ("GET", "tenants"):
            return _json(200, await views.tenants(gateway, query.get("sort", "connections")))
        raise NotFoundError(f"No console API {method} {head}")

    async def _api_tenant(self, parts: list[str], query: dict[str, str]) -> Response:
        """``GET tenants/{t}`` and ``GET tenants/{t}/connections``."""
        name = _tenant(parts[0])
        if len(parts) == 1:
            return _json(200, await views.tenant(self.gateway, name))
        if parts[1] != "connections":
            raise NotFoundError(f"No console API GET tenants/{{tenant}}/{parts[1]}")
        limit = int(_number(query.get("limit", "25"), "limit"))
        return _json(200, await views.tenant_connections(self.gateway, name, limit, query.get("nextToken") or None))

    async def _api_connection(self, request: Request, parts: list[str]) -> Response:
        """``GET`` / ``DELETE connections/{id}`` and ``POST connections/{id}/messages``."""
        cid, method, gateway = parts[0], request.method, self.gateway
        if not is_connection_id(cid):
            raise BadRequestError("Invalid connectionId")
        if len(parts) == 1 and method == "GET":
            return _json(200, await views.connection(gateway, cid))
        if len(parts) == 1 and method == "DELETE":
            await gateway.delete_connection(cid)
            log.info("console: connection %s disconnected by an operator from %s", cid, request.peer)
            return Response(204, b"", [])
        if parts[1:] == ["messages"] and method == "POST":
            if request.body_too_large:
                raise PayloadTooLargeError("Message too long")
            await gateway.post_to_connection(cid, request.body)
            return _json(200, {"sent": len(request.body)})
        raise NotFoundError(f"No console API {method} connections/{{id}}/{'/'.join(parts[1:])}")

    # ---------------------------------------------------------------- pages and login

    def _page(self, request: Request) -> Response:
        if self._password is None:  # open console (loopback): a session for CSRF all the same
            if self.sessions.get(self._cookie(request)) is None:
                token, _ = self.sessions.open()
                return self._html("index.html", 200, [("Set-Cookie", self._cookie_header(request, token))])
            return self._html("index.html")
        if self.sessions.get(self._cookie(request)) is None:
            return self._html("login.html")
        return self._html("index.html")

    def _asset(self, name: str) -> Response:
        found = self._static.get(name)
        if found is None or name in _PAGES:
            raise NotFoundError("Not found")
        body, content_type = found
        return Response(200, body, [("Content-Type", content_type)])

    def _html(self, name: str, status: int = 200, headers: list[tuple[str, str]] | None = None,
              message: str = "") -> Response:
        body = self._static[name][0]
        if message:  # our own fixed sentences, never a client's text
            body = body.replace(b"<!--message-->", message.encode())
        return Response(status, body, [("Content-Type", _TYPES[".html"]), *(headers or [])])

    def _form_login(self, request: Request) -> Response:
        fields = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        status, token = self._login(request, fields.get("password", ""))
        if token is None:
            return self._html("login.html", status, message=_LOCKED if status == 429 else _WRONG)
        return Response(303, b"", [("Location", "/console"), ("Set-Cookie", self._cookie_header(request, token))])

    def _api_login(self, request: Request) -> Response:
        try:
            body = orjson.loads(request.body or b"{}")
        except orjson.JSONDecodeError:
            raise BadRequestError("The body must be JSON: {\"password\": ...}") from None
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(password, str):
            raise BadRequestError("The body must be JSON: {\"password\": ...}")
        status, token = self._login(request, password)
        if token is None:
            return _json(status, {"message": _LOCKED if status == 429 else _WRONG})
        return Response(204, b"", [("Set-Cookie", self._cookie_header(request, token))])

    def _login(self, request: Request, password: str) -> tuple[int, str | None]:
        """(status, the new session's token or None): 429 while the address is locked out,
        401 for a wrong password (counted), 200 with a token."""
        address = request.peer
        if self.lockout.locked(address):
            log.warning("console login from %s refused: locked out after wrong passwords", address)
            return 429, None
        if self._password is None or not password_matches(password, self._password):
            self.lockout.wrong(address)
            log.warning("console login from %s: wrong password", address)
            return 401, None
        token, _ = self.sessions.open()
        log.info("console login from %s", address)
        return 200, token

    # ---------------------------------------------------------------- cookies

    def _cookie(self, request: Request) -> str | None:
        name = self.cookie_name
        for header in request.headers.getall("Cookie", ()):
            for pair in header.split(";"):
                key, _, value = pair.strip().partition("=")
                if key == name:
                    return value
        return None

    def _cookie_header(self, request: Request, token: str, max_age: float | None = None) -> str:
        age = int(self.gateway.config.console.session_s if max_age is None else max_age)
        secure = "; Secure" if _behind_tls(request) else ""
        return f"{self.cookie_name}={token}; Path=/console; Max-Age={age}; HttpOnly; SameSite=Strict{secure}"


def _behind_tls(request: Request) -> bool:
    """The browser reached us over TLS: through a proxy that says so."""
    return request.headers.get("X-Forwarded-Proto", "").strip().lower() == "https"


def _own_origins(request: Request) -> tuple[str, ...]:
    host = request.headers.get("Host", "")
    return (f"http://{host}", f"https://{host}") if host else ()


def _json(status: int, body: Any) -> Response:
    return Response(status, orjson.dumps(body), [("Content-Type", _JSON)])


def _number(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise BadRequestError(f"{what} must be a number") from None
    if number != number or number < 0 or number > 1e12:
        raise BadRequestError(f"{what} must be a number from 0")
    return number


def _tenant(name: str) -> str:
    if not name or len(name) > MAX_TENANT_CHARS:
        raise BadRequestError("Invalid tenant")
    return name
