"""What a request may cost is checked before it is paid.

``Guard`` is the outermost ASGI middleware. Before the application reads a byte of the body it
checks the API key (headers only: an unauthenticated 200 MB post is answered 401 at once, unread)
and the body size (``Content-Length`` against the route's cap: 413 at once; a chunked body is
counted as it streams and cut at the cap). Answers that leave a body unread close the
connection. Every response carries ``nosniff``, frame and referrer headers.

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
JOBS_BODY = 4 << 20  # up to 10,000 paths


def body_cap(path: str, max_upload_bytes: int) -> int:
    if path in ("/v1/search/image", "/v1/segment"):
        return max_upload_bytes + MULTIPART_SLACK
    if path == "/v1/search":
        return max_upload_bytes * 4 // 3 + 4 + JSON_SLACK
    if path.startswith("/v1/jobs"):
        return JOBS_BODY
    return SMALL_BODY


def key_problem(x_api_key: str | None, authorization: str | None, expected: str | None) -> ProblemError | None:
    """Why a request's key (``X-API-Key`` or a Bearer token) is refused, or None. The one check, used
    by ``Guard`` before the body and by the routes' dependency (which documents it in OpenAPI)."""
    if not expected:
        return None
    given = x_api_key or ""
    if not given and (authorization or "").lower().startswith("bearer "):
        given = authorization[7:]
    if not given:
        return ProblemError(
            401,
            "API key required",
            "send it as the X-API-Key header or a Bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()):
        return ProblemError(403, "Invalid API key")
    return None


class Guard:
    def __init__(self, app, settings):
        self.app, self.settings = app, settings

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

        path = scope.get("path", "")
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path.startswith("/v1"):
            bad = key_problem(headers.get(b"x-api-key"), headers.get(b"authorization"), self.settings.api_key)
            if bad is not None:
                return await refuse(bad.status, bad.title, bad.detail, bad.headers)
        cap = body_cap(path, self.settings.max_upload_bytes)
        length = headers.get(b"content-length")
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
        self._lock = threading.Lock()

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
        try:
            yield
        finally:
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
