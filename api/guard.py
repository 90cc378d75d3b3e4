"""What a request may cost is checked before it is paid.

``Guard`` is the outermost ASGI middleware but for the request metrics (which count its answers).
Before the application reads a byte of the body it checks, from the headers alone: the ``Host``
(an allow-list, loopback names by default, against DNS rebinding), that a state-changing request
does not come from another site's page (``Origin``/``Sec-Fetch-Site``), the access the route
needs (a read key for queries and /metrics, an admin key for jobs, concept writes, info and
doctor; ``access_problem``), the content type of writes (JSON, or multipart on the upload
routes: an HTML form cannot post to it), and the body size (``Content-Length`` against the
route's cap: 413 at once; a chunked body is counted as it streams and cut at the cap). Answers
that leave a body unread close the connection. Every response carries ``nosniff``, frame and
referrer headers.

``WorkSlots`` bounds the decode/render/model work running at once (``max_concurrent_work``) and
how many requests may wait for it (``max_queued_work``); past that, 503 with Retry-After. A slot is
held by the worker thread until its work really ends, so a request answered 503 by the timeout
middleware still counts until then: retrying clients cannot pile up work.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from contextlib import contextmanager

from segsearch.api.errors import ProblemError, problem

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# Body caps past the upload limit: multipart boundaries and form fields; base64 grows data by 4/3.
MULTIPART_SLACK = 1 << 20
JSON_SLACK = 64 << 10
SMALL_BODY = 64 << 10  # every other route takes a small JSON body (or none)
JOBS_BODY = 256 << 10  # max_job_paths (1,000) paths of 250 characters; 100 queued jobs hold at most 25 MiB


def body_cap(path: str, max_upload_bytes: int) -> int:
    if path in ("/v1/search/image", "/v1/segment"):
        return max_upload_bytes + MULTIPART_SLACK
    if path == "/v1/search":
        return max_upload_bytes * 4 // 3 + 4 + JSON_SLACK
    if path.startswith("/v1/jobs"):
        return JOBS_BODY
    return SMALL_BODY


# Access levels, lowest first. READ: searches, records, renders, /metrics. ADMIN: jobs, repair,
# concept writes, info, doctor. OWNER: the data directory's owner (the CLI handing work to the
# server that holds it, with the token of server.json): ADMIN, and job paths outside the roots.
READ, ADMIN, OWNER = 1, 2, 3
OWNER_HEADER = "x-segsearch-owner"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
MULTIPART_ROUTES = ("/v1/search/image", "/v1/segment")


def required_access(method: str, path: str) -> int | None:
    """The access a route needs (None: open, like the health probes and the page)."""
    if path == "/metrics":
        return READ
    if not (path == "/v1" or path.startswith("/v1/")):
        return None
    if path.startswith("/v1/jobs") or path in ("/v1/info", "/v1/doctor"):
        return ADMIN
    if path.startswith("/v1/concepts") and (method == "DELETE" or (method == "POST" and not path.endswith("/search"))):
        return ADMIN
    return READ


def _same(given: str, expected: str | None) -> bool:
    return bool(expected) and hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest(), hashlib.sha256(expected.encode()).digest()
    )


def access_problem(
    headers: dict[str, str], settings, owner_token: str | None, need: int
) -> tuple[int, ProblemError | None]:
    """(the access a request's headers give, why it falls short of ``need`` or None). The one check,
    used by ``Guard`` before the body is read and by the routes' dependencies (which document it)."""
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization") or ""
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:]
    owner = headers.get(OWNER_HEADER)
    if owner and owner_token and _same(owner, owner_token):
        return OWNER, None
    read_key, admin_key = settings.api_key, settings.admin_key
    if _same(given, admin_key):
        access = ADMIN
    elif _same(given, read_key):
        access = READ
    elif not read_key and not admin_key:
        access = ADMIN  # a keyless server (loopback by default): its allowed hosts may do anything
    elif not read_key:
        access = READ  # only an admin key: reads are open
    else:
        access = 0
    if access >= need:
        return access, None
    if access == 0 and not given:
        return access, ProblemError(
            401,
            "API key required",
            "send it as the X-API-Key header or a Bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if access == 0:
        return access, ProblemError(403, "Invalid API key")
    if not admin_key:
        return access, ProblemError(
            403,
            "Read-only server",
            "this server takes no admin requests over HTTP (jobs, concept writes, info, doctor): "
            "start it with SEGSEARCH_ADMIN_KEY set to allow them",
        )
    return access, ProblemError(403, "Admin key required", "this route needs the admin key (SEGSEARCH_ADMIN_KEY)")


def allowed_hosts(settings) -> set[str] | None:
    """Host names the server answers to (None: any)."""
    if settings.allowed_hosts:
        names = {h.strip().lower().strip("[]") for h in settings.allowed_hosts}
        return None if "*" in names else names
    names = set(LOOPBACK_HOSTS)
    if settings.host not in ("0.0.0.0", "::", ""):
        names.add(settings.host.lower().strip("[]"))
    return names


def host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def cross_site(method: str, headers: dict[str, str], settings) -> str | None:
    """Why a state-changing request looks cross-site (a browser on another origin), or None."""
    if method not in UNSAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is None:
        return "Sec-Fetch-Site says cross-site" if headers.get("sec-fetch-site") == "cross-site" else None
    if origin in settings.cors_origins:
        return None
    from urllib.parse import urlsplit

    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        netloc = ""
    if origin == "null" or not netloc or netloc != headers.get("host", "").strip().lower():
        return f"Origin {origin[:100]!r} is not this server (SEGSEARCH_CORS_ORIGINS lists others allowed)"
    return None


def content_type_problem(method: str, path: str, headers: dict[str, str]) -> str | None:
    """Writes take JSON (or, on the upload routes, multipart): a form or text body is refused
    before it is read, so a plain HTML form on another site cannot make a request the server acts on."""
    if method not in UNSAFE_METHODS or not path.startswith("/v1"):
        return None
    ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if path in MULTIPART_ROUTES:  # form routes that change nothing: the Origin check guards them
        ok = ctype in ("multipart/form-data", "application/x-www-form-urlencoded")
        return None if ok else "this route takes multipart/form-data"
    if not ctype or ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json")):
        return None
    return f"this route takes application/json, not {ctype}"


class Guard:
    def __init__(self, app, settings, owner_token: str | None = None):
        self.app, self.settings, self.owner_token = app, settings, owner_token
        self.hosts = allowed_hosts(settings)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "cut": False}

        async def secured_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        async def app_send(message):
            if not state["cut"]:  # after a cut the answer was given: the application's is dropped
                await secured_send(message)

        async def refuse(status: int, title: str, detail: str | None = None, extra: dict | None = None):
            headers = {"Connection": "close", **(extra or {})}  # the unread body goes with the connection
            await problem(status, title, detail, scope.get("path"), headers)(scope, receive, secured_send)

        path, method = scope.get("path", ""), scope.get("method", "GET")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if self.hosts is not None and host is not None and host_name(host) not in self.hosts:
            return await refuse(
                400,
                "Invalid Host header",
                "this server answers only to its allowed host names (SEGSEARCH_ALLOWED_HOSTS), against DNS rebinding",
            )
        why = cross_site(method, headers, self.settings)
        if why is not None:
            return await refuse(403, "Cross-site request refused", why)
        need = required_access(method, path)
        if need is not None:
            access, bad = access_problem(headers, self.settings, self.owner_token, need)
            if bad is not None:
                return await refuse(bad.status, bad.title, bad.detail, bad.headers)
            scope.setdefault("state", {})["access"] = access
        why = content_type_problem(method, path, headers)
        if why is not None:
            return await refuse(415, "Unsupported Media Type", why)
        cap = body_cap(path, self.settings.max_upload_bytes)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await refuse(400, "Bad Request", "invalid Content-Length")
            if int(length) > cap:
                return await refuse(
                    413,
                    "Request body too large",
                    f"{int(length):,} bytes; this route takes at "
                    f"most {cap:,} (SEGSEARCH_MAX_UPLOAD_BYTES sets the upload limit)",
                )
        seen = {"n": 0}

        async def counted_receive():
            if state["cut"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen["n"] += len(message.get("body", b""))
                if seen["n"] > cap and not state["started"]:  # a streamed (chunked) body past the cap
                    state["cut"] = True
                    await refuse(413, "Request body too large", f"the body passed {cap:,} bytes, this route's limit")
                    return {"type": "http.disconnect"}  # the application stops reading
            return message

        try:
            await self.app(scope, counted_receive, app_send)
        except Exception:  # noqa: BLE001 - after a cut the application may fail on its disconnect; answered
            if not state["cut"]:
                raise


class WorkSlots:
    """At most ``n`` heavy jobs at once, at most ``queue`` waiting; used from worker threads."""

    def __init__(self, n: int, queue: int, wait_s: float):
        self.n, self.queue, self.wait_s = n, queue, wait_s
        self._slots = threading.BoundedSemaphore(n)
        self._waiting = 0
        self._busy = 0
        self._lock = threading.Lock()

    def saturated(self) -> bool:
        """Every slot busy and the queue full: a request for one now would be refused (checked on
        the event loop, before a worker thread or the body is spent on it)."""
        with self._lock:
            return self._busy >= self.n and self._waiting >= self.queue

    @contextmanager
    def slot(self):
        got = self._slots.acquire(blocking=False)
        if not got:
            with self._lock:
                if self._waiting >= self.queue:
                    raise ProblemError(
                        503,
                        "Server busy",
                        f"{self.n} requests are being worked on and {self._waiting} wait; try again",
                        headers={"Retry-After": "2"},
                    )
                self._waiting += 1
            try:
                got = self._slots.acquire(timeout=self.wait_s)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not got:
                raise ProblemError(
                    503, "Server busy", "no worker became free in time; try again", headers={"Retry-After": "2"}
                )
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
            self._slots.release()


class ByteLRU:
    """An LRU cache of bytes values bounded by their total size, not their count."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._d: OrderedDict = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._d[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, v = self._d.popitem(last=False)
                self._size -= len(v)

    @property
    def size(self) -> int:
        return self._size
