"""HTTP authentication and authorization of DICOMweb (PS3.18) and the admin API: credentials, roles, routes.

Every request needs a role, from ``ROUTE_ROLES`` (first rule that matches its method and path;
none: ``admin``). A request from a loopback address without an Authorization header has the
``[auth] loopback_roles``; any other needs credentials: ``Basic`` (an ``[auth.users]`` user),
``Bearer`` (an ``[auth.tokens]`` API token, or an OpenID Connect JWT of ``[auth] oidc_issuer``).
No or bad credentials: 401 with a challenge; credentials without the role: 403.

A new route is covered by the rules as they stand (GET/HEAD/OPTIONS: read; DELETE and any other
method: admin). To give it another role, add a ``RouteRole`` to ``ROUTE_ROLES`` above the rules it
would otherwise match, e.g. ``RouteRole(ANY, "/api/audit", "admin")``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pacsnode.config.settings import Role, Settings
from pacsnode.security.access import restricted_function, user_authentication
from pacsnode.security.credentials import Authenticator, CredentialError, Principal
from pacsnode.security.events import AuditSink

log = logging.getLogger("pacsnode.web")

ANY = frozenset(("*",))
READING = frozenset(("GET", "HEAD", "OPTIONS"))

# RFC 7235 4.1 / RFC 7617 / RFC 6750 3: the schemes a client may answer a 401 with.
CHALLENGE = 'Basic realm="pacsnode", Bearer'
# A successful login is audited once per user, scheme and client address in this many seconds
# (HTTP sends credentials with every request; each request is not a login). Failures: always.
LOGIN_AUDIT_INTERVAL = 3600.0


@dataclass(frozen=True, slots=True)
class RouteRole:
    """Requests with one of ``methods`` ("*": any) to ``prefix`` or below it need ``role``.

    ``prefix`` "/" matches every path; "{base}" stands for ``[web] base_path`` (/dicom-web).
    """

    methods: frozenset[str]
    prefix: str
    role: Role

    def matches(self, method: str, path: str, base_path: str) -> bool:
        """Whether a request is under this rule."""
        if "*" not in self.methods and method not in self.methods:
            return False
        prefix = self.prefix.replace("{base}", base_path)
        return prefix == "/" or path == prefix or path.startswith(prefix + "/")


# First match wins; a request no rule matches needs admin.
ROUTE_ROLES: tuple[RouteRole, ...] = (
    # Cancelling a scheduled procedure step is a worklist write, not a deletion of data.
    RouteRole(frozenset(("DELETE",)), "/api/worklist", "write"),
    RouteRole(ANY, "/api/system", "admin"),
    RouteRole(ANY, "/api/audit", "admin"),  # the audit trail (PS3.15 A.5)
    RouteRole(frozenset(("DELETE",)), "/", "admin"),
    RouteRole(frozenset(("POST",)), "{base}/studies", "write"),  # STOW-RS (PS3.18 10.5)
    RouteRole(frozenset(("POST", "PUT")), "/api/worklist", "write"),
    RouteRole(frozenset(("POST", "PUT", "PATCH")), "/api/mpps", "write"),
    # A de-identified copy of a study, archived or sent to a peer: an export, for admins.
    RouteRole(frozenset(("POST",)), "/api/studies", "admin"),
    # QIDO-RS, WADO-RS, WADO-URI, metadata, rendered, the admin API's reads, the viewer.
    RouteRole(READING, "/", "read"),
)


def required_role(method: str, path: str, base_path: str, rules: tuple[RouteRole, ...] = ROUTE_ROLES) -> Role:
    """The role a request needs (admin when no rule matches)."""
    for rule in rules:
        if rule.matches(method, path, base_path):
            return rule.role
    return "admin"


def names_loopback(host_header: str) -> bool:
    """Whether a Host header names this machine by a loopback name or address (DNS rebinding guard)."""
    name = host_header.strip().lower()
    if name.startswith("["):  # [::1]:8042
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if not name:
        return True  # HTTP/1.0 without Host: only a local tool sends that
    return name == "localhost" or name.endswith(".localhost") or is_loopback(name)


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine's (127.0.0.0/8, ::1, IPv4-mapped loopback)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class HttpGuard:
    """Decides on each request: which principal, whether it has the route's role; audits logins."""

    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator,
        audit: AuditSink,
        rules: tuple[RouteRole, ...] = ROUTE_ROLES,
    ) -> None:
        self.settings = settings
        self.authenticator = authenticator
        self.audit = audit
        self.rules = rules
        self.loopback_roles = frozenset(settings.auth.loopback_roles)
        self._logins: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    async def authenticate(self, authorization: str, client: str, *, audit_failure: bool = True) -> Principal:
        """The principal of an Authorization header; CredentialError when it names none."""
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        scheme = scheme.lower()
        try:
            if scheme == "basic":
                try:
                    user, sep, password = (
                        base64.b64decode(value, validate=True).decode("utf-8").partition(":")
                    )
                except (binascii.Error, UnicodeDecodeError):
                    raise CredentialError("malformed Basic credentials") from None
                if not sep:
                    raise CredentialError("malformed Basic credentials")
                # scrypt: tens of milliseconds, in a worker thread.
                principal = await run_in_threadpool(self.authenticator.password, user, password)
            elif scheme == "bearer" and value:
                found = self.authenticator.api_token(value)  # a hash and a lookup: at once
                if found is None:  # an OpenID Connect JWT: its JWKS may be a URL
                    found = await run_in_threadpool(self.authenticator.bearer, value)
                principal = found
            else:
                raise CredentialError(f"unsupported authorization scheme {scheme!r}")
        except CredentialError as exc:
            if audit_failure:
                self._audit_login("", client, False, str(exc))
            raise
        self._audit_login(principal.name, client, True, principal.method)
        return principal

    def _audit_login(self, user: str, client: str, success: bool, detail: str) -> None:
        if success:
            key = (user, detail, client)
            now = time.monotonic()
            last = self._logins.get(key)
            if last is not None and now - last < LOGIN_AUDIT_INTERVAL:
                return
            self._logins[key] = now
            self._logins.move_to_end(key)
            while len(self._logins) > 4096:
                self._logins.popitem(last=False)
        else:
            log.warning("HTTP credentials from %s refused: %s", client, detail)
        self.audit.emit(
            user_authentication(user, client, self.settings.node.aet, success=success, description=detail)
        )

    def forbidden(self, principal: Principal, role: Role, method: str, path: str, client: str) -> str:
        """Record a request refused for want of a role; the text of its 403."""
        text = f"{principal.name} lacks the {role} role for {method} {path}"
        log.warning("HTTP %s from %s: 403, %s", principal.method, client, text)
        self.audit.emit(
            restricted_function(
                principal.name, client, self.settings.node.aet, text, url=path, ae_title=False
            )
        )
        return f"the {role} role is needed"


class HttpAuth:
    """ASGI middleware: authenticates each HTTP request and checks the role its route needs."""

    def __init__(self, app: ASGIApp, guard: HttpGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        method, path = scope["method"], scope["path"]
        role = required_role(method, path, guard.settings.web.base_path, guard.rules)
        client = scope.get("client")
        host = str(client[0]) if client else ""
        authorization = Headers(scope=scope).get("authorization")
        # From loopback no credentials are needed for the loopback_roles, when the request names
        # this machine: a page that rebinds its own DNS name to 127.0.0.1 gets no free roles.
        anonymous = (
            is_loopback(host)
            and role in guard.loopback_roles
            and names_loopback(Headers(scope=scope).get("host", ""))
        )
        if authorization is None:
            if anonymous:
                scope["pacsnode.principal"] = Principal("loopback", guard.loopback_roles, "loopback")
                await self.app(scope, receive, send)
                return
            response = PlainTextResponse(
                "authentication required", status_code=401, headers={"WWW-Authenticate": CHALLENGE}
            )
            await response(scope, receive, send)
            return
        try:
            principal = await guard.authenticate(authorization, host, audit_failure=not anonymous)
        except CredentialError as exc:
            if anonymous:
                # Credentials that were not needed and do not check out (dicomweb-client's CLI
                # sends "Bearer None"): the request is served as one without credentials.
                log.info("%s %s from %s: credentials ignored (%s)", method, path, host, exc)
                scope["pacsnode.principal"] = Principal("loopback", guard.loopback_roles, "loopback")
                await self.app(scope, receive, send)
                return
            response = PlainTextResponse(
                "invalid credentials", status_code=401, headers={"WWW-Authenticate": CHALLENGE}
            )
            await response(scope, receive, send)
            return
        if role not in principal.roles:
            text = guard.forbidden(principal, role, method, path, host)
            await PlainTextResponse(text, status_code=403)(scope, receive, send)
            return
        scope["pacsnode.principal"] = principal
        await self.app(scope, receive, send)
