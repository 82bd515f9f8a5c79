"""S3 endpoints that stopped answering: after one timeout, fail at once instead of waiting again.

A hung endpoint (the kernel still accepts connections, the server never answers) costs
read timeout x attempts per request, and one IO-manager load makes several requests in a row
(HEAD here, GET from the primary, HEAD and GET at each replica), as does the abort of a
multipart upload after a failed part. So once a request to an endpoint has timed out (after
all its attempts), later requests to that endpoint fail at once, without being sent, for
`S3Options.unresponsive_for_s` seconds, with the same explanation. Requests already in
flight (the other parallel part uploads of a replication) finish or time out on their own;
one that succeeds clears the mark, since the endpoint answered.

The mark is per process and keyed by the endpoint's URL, not by site or bucket: sites on
one server share its outage. It is attached to a client with botocore's event hooks
(`before-send` refuses, `after-call-error` marks, `after-call` clears), so it covers every
call the storage makes, including those s3transfer makes from its own threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError


@dataclass(frozen=True)
class Timeout:
    """One request that timed out: what, where, how long it waited, and when."""

    endpoint: str
    kind: str  # "connect": no connection; "read": connected, no answer; "send": request not taken
    operation: str  # the S3 operation, e.g. "GetObject"
    seconds: float  # the timeout that expired (per attempt)
    attempts: int
    at: float  # time.monotonic()
    until: float  # requests fail at once until then

    def ago(self) -> float:
        return max(0.0, time.monotonic() - self.at)


class EndpointUnresponsive(BotoCoreError):
    """Raised instead of sending a request to an endpoint marked unresponsive."""

    fmt = (
        "S3 endpoint {endpoint} is treated as unresponsive: a {operation} to it timed out "
        "({kind} timeout {seconds:g} s) {ago:.1f} s ago; the request was not sent"
    )

    def __init__(self, timeout: Timeout):
        super().__init__(
            endpoint=timeout.endpoint,
            operation=timeout.operation,
            kind=timeout.kind,
            seconds=timeout.seconds,
            ago=timeout.ago(),
        )
        self.timeout = timeout


_lock = threading.Lock()
_marks: dict[str, Timeout] = {}


def timeout_kind(exc: BaseException | None) -> str | None:
    """'connect', 'read' or 'send' for a request that timed out, else None.

    ConnectTimeoutError is also an EndpointConnectionError, so it is tested first. A socket
    timeout while the request body is sent (the server stopped reading: a large part upload
    to a hung endpoint) reaches us as ConnectionClosedError wrapping urllib3's ProtocolError
    wrapping the socket's TimeoutError."""
    if isinstance(exc, ConnectTimeoutError):
        return "connect"
    if isinstance(exc, ReadTimeoutError):
        return "read"
    if isinstance(exc, ConnectionClosedError) and _socket_timeout_inside(exc):
        return "send"
    return None


def _socket_timeout_inside(exc: BaseException, depth: int = 0) -> bool:
    if isinstance(exc, TimeoutError):  # the builtin (socket.timeout), not botocore's or urllib3's
        return True
    if depth > 4:
        return False
    inner = [getattr(exc, "kwargs", {}).get("error"), exc.__cause__, exc.__context__, *exc.args]
    return any(isinstance(e, BaseException) and _socket_timeout_inside(e, depth + 1) for e in inner)


def mark(endpoint: str, kind: str, operation: str, seconds: float, attempts: int, window_s: float) -> Timeout:
    """Record that a request to `endpoint` timed out; keeps an earlier mark still in force."""
    now = time.monotonic()
    with _lock:
        existing = _marks.get(endpoint)
        if existing is not None and existing.until > now:
            return existing
        timeout = Timeout(endpoint, kind, operation, seconds, attempts, now, now + window_s)
        _marks[endpoint] = timeout
        return timeout


def current(endpoint: str) -> Timeout | None:
    """The mark in force for `endpoint`, or None."""
    timeout = _marks.get(endpoint)
    if timeout is None:
        return None
    if timeout.until <= time.monotonic():
        with _lock:
            if _marks.get(endpoint) is timeout:
                del _marks[endpoint]
        return None
    return timeout


def clear(endpoint: str) -> None:
    if endpoint in _marks:
        with _lock:
            _marks.pop(endpoint, None)


def forget_all() -> None:
    """Drop every mark (tests that hang an endpoint on a port a later test may reuse)."""
    with _lock:
        _marks.clear()


def watch(client, endpoint: str, window_s: float) -> None:
    """Attach the refuse/mark/clear hooks to a boto3 S3 client (once per endpoint)."""
    config = client.meta.config
    attempts = int((config.retries or {}).get("total_max_attempts", 1))

    def refuse(**_kwargs):
        timeout = current(endpoint)
        if timeout is not None:
            raise EndpointUnresponsive(timeout)

    def failed(exception=None, event_name: str = "", **_kwargs):
        kind = timeout_kind(exception)
        if kind is not None:
            seconds = config.connect_timeout if kind == "connect" else config.read_timeout
            mark(endpoint, kind, event_name.rsplit(".", 1)[-1], float(seconds), attempts, window_s)

    def answered(**_kwargs):
        clear(endpoint)

    events = client.meta.events
    uid = f"gravity-unresponsive-{endpoint}"
    events.register("before-send.s3", refuse, unique_id=uid + "-refuse")
    events.register("after-call-error.s3", failed, unique_id=uid + "-mark")
    events.register("after-call.s3", answered, unique_id=uid + "-clear")
