"""The router of `sgc serve --replicas N`: one HTTP front for N `sgc serve` replicas.

Each generation request (`/generate`, `/v1/completions`, `/v1/chat/completions`, `/sgc/score`,
`/programs/...`) goes to one replica chosen by a routing policy (`executor/cluster/router.py`;
`cache_aware` by default: the replica that saw the longest prefix of the prompt, unless the load is
imbalanced) and is forwarded with httpx, streams included; the replica's answer comes back as is.
The router parses bodies only to find the prompt: validating them is the replica's job, so a bad
body gets the replica's own 400.

Replicas are health-checked (`GET /health` every `health_interval` s). One that fails the check
`unhealthy_after` times in a row, or refuses a connection, is taken out (the policy forgets what it
saw) until it answers again. A request whose replica fails before anything was sent to its client
(a refused or dropped connection, no response) is retried once on another replica; a stream that
breaks after its first bytes ends with an error event.

The router's own routes: `/health` (200 while one replica is up), `/metrics` (requests routed per
replica and why, retries, replicas up, in flight), `/router/replicas` (JSON). `/flush_cache` and
`/abort_request` go to every replica that is up; other GETs (`/get_model_info`, `/v1/models`, ...)
to the first replica up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

from executor.cluster.router import RoutingPolicy, make_policy
from sgc.serve.core import DEFAULT_MAX_BODY_BYTES, BodyTooLarge, buffer_body, error_response

logger = logging.getLogger("sgc.serve.router")

__all__ = ["Replica", "RouterState", "build_router_app", "routing_key"]

_ROUTED_POSTS = ("/generate", "/v1/completions", "/v1/chat/completions", "/sgc/score")
_BROADCAST_POSTS = ("/flush_cache", "/abort_request")
# Hop-by-hop and length headers are the router's own business on each leg.
_DROP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
_POLL_S = 0.25


class ReplicaFailed(Exception):
    """The replica could not answer (refused or dropped connection): the request may go elsewhere."""


@dataclass
class Replica:
    name: str
    url: str
    up: bool = True
    inflight: int = 0
    failed_checks: int = 0


class RouterState:
    """The replicas, the policy and the counters the routes share."""

    def __init__(self, urls: list[str], policy: RoutingPolicy, api_key: str | None = None) -> None:
        if not urls:
            raise ValueError("the router needs at least one replica URL")
        self.replicas = {str(i): Replica(str(i), url.rstrip("/")) for i, url in enumerate(urls)}
        self.policy = policy
        self.api_key = api_key
        self.http: httpx.AsyncClient | None = None
        self.registry = CollectorRegistry()
        self.routed = Counter("sgc_router_routed_requests", "Requests sent to each replica, by the policy's reason",
                              ["replica", "url", "reason"], registry=self.registry)
        self.retries = Counter("sgc_router_retries", "Requests retried elsewhere after their replica failed",
                               ["replica"], registry=self.registry)
        self.failures = Counter("sgc_router_replica_failures", "Replicas taken out (failed checks or connections)",
                                ["replica"], registry=self.registry)
        self.registry.register(_ReplicaGauges(self))

    def up(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.up]

    def take_out(self, replica: Replica, why: str) -> None:
        if replica.up:
            logger.warning("replica %s (%s) is out: %s", replica.name, replica.url, why)
            replica.up = False
            self.failures.labels(replica.name).inc()
            self.policy.remove_replica(replica.name)

    def bring_back(self, replica: Replica) -> None:
        if not replica.up:
            logger.warning("replica %s (%s) is back", replica.name, replica.url)
        replica.up, replica.failed_checks = True, 0


class _ReplicaGauges:
    def __init__(self, state: RouterState) -> None:
        self.state = state

    def collect(self) -> Any:
        up = GaugeMetricFamily("sgc_router_replica_up", "1 while the replica takes requests", labels=["replica", "url"])
        inflight = GaugeMetricFamily("sgc_router_inflight_requests", "Requests the router waits on, per replica",
                                     labels=["replica", "url"])
        for r in self.state.replicas.values():
            up.add_metric([r.name, r.url], 1.0 if r.up else 0.0)
            inflight.add_metric([r.name, r.url], float(r.inflight))
        yield up
        yield inflight


# -- the routing key ------------------------------------------------------------------------------------
def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], (str, list)) else value


def _as_key(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return tuple(value)
    return ""


def routing_key(path: str, body: Any) -> Any:
    """What the policy routes on: the prompt text (or a tuple of token ids); "" when there is none
    (the replica then answers whatever is wrong with the body)."""
    if not isinstance(body, dict):
        return ""
    if path == "/generate":
        return _as_key(_first(body.get("text") if body.get("text") is not None else body.get("input_ids")))
    if path == "/v1/completions":
        return _as_key(_first(body.get("prompt")))
    if path == "/v1/chat/completions":
        parts = []
        for message in body.get("messages") or []:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict)
                                  and isinstance(p.get("text"), str))
            parts.append(f"<{message.get('role')}>{content if isinstance(content, str) else ''}")
        return "".join(parts)
    if path == "/sgc/score":
        return _as_key(body.get("input_ids"))
    if path.startswith("/programs/"):
        return path + json.dumps(body.get("arguments") or body.get("batch"), sort_keys=True, default=str)
    return ""


# -- forwarding -----------------------------------------------------------------------------------------
def _headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in _DROP_HEADERS}


def _response_headers(upstream: httpx.Response) -> dict[str, str]:
    keep = ("content-type", "retry-after")
    return {k: v for k, v in upstream.headers.items() if k.lower() in keep}


async def _send(state: RouterState, replica: Replica, request: Request, path: str, body: bytes,
                stream: bool) -> httpx.Response:
    assert state.http is not None
    upstream = state.http.build_request(request.method, replica.url + path, content=body, headers=_headers(request),
                                        params=request.query_params)
    try:
        return await state.http.send(upstream, stream=stream)
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
            httpx.ConnectTimeout) as exc:
        raise ReplicaFailed(f"{type(exc).__name__}: {exc}") from None


async def _until_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(_POLL_S)


async def route_request(state: RouterState, request: Request, path: str) -> Response:
    """Choose a replica, forward, retry once elsewhere if the replica failed before answering."""
    body = await request.body()
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        parsed = None
    key = routing_key(path, parsed)
    stream = isinstance(parsed, dict) and parsed.get("stream") is True
    tried: set[str] = set()
    for attempt in range(2):
        loads = {r.name: r.inflight for r in state.up() if r.name not in tried}
        if not loads:
            break
        decision = state.policy.choose(key, loads)
        replica = state.replicas[str(decision.replica)]
        state.policy.record(key, replica.name)
        state.routed.labels(replica.name, replica.url, decision.reason).inc()
        tried.add(replica.name)
        replica.inflight += 1
        handed_over = False
        try:
            if not stream:
                send = asyncio.ensure_future(_send(state, replica, request, path, body, False))
                watch = asyncio.ensure_future(_until_disconnect(request))
                try:
                    await asyncio.wait({send, watch}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    watch.cancel()
                if not send.done():  # the client left: closing the upstream call aborts it there
                    send.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ReplicaFailed):
                        await send
                    return error_response(499, "client closed the request", "client_closed_request")
                upstream = send.result()
                return Response(upstream.content, upstream.status_code, headers=_response_headers(upstream))
            upstream = await _send(state, replica, request, path, body, True)
            chunks = upstream.aiter_raw()
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                first = b""
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                await upstream.aclose()
                raise ReplicaFailed(f"{type(exc).__name__}: {exc}") from None
            handed_over = True
            return StreamingResponse(_relay(state, replica, upstream, first, chunks), upstream.status_code,
                                     headers=_response_headers(upstream))
        except ReplicaFailed as exc:
            state.take_out(replica, str(exc))
            if attempt == 0:
                state.retries.labels(replica.name).inc()
                logger.warning("retrying a %s request elsewhere: replica %s failed (%s)", path, replica.name, exc)
        except httpx.HTTPError as exc:  # anything else on the way (a timeout): not retried, named
            logger.warning("replica %s: %s request failed: %s", replica.name, path, exc)
            return error_response(502, f"replica {replica.name} failed: {type(exc).__name__}", "bad_gateway")
        finally:
            if not handed_over:
                replica.inflight -= 1
    return error_response(503, "no replica is up to take the request" if not tried else
                          "the replicas tried failed before answering; retry later", "service_unavailable",
                          headers={"Retry-After": "1"})


async def _relay(state: RouterState, replica: Replica, upstream: httpx.Response, first: bytes,
                 chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream's bytes as they come; a replica that breaks mid-stream ends it with an error event."""
    try:
        if first:
            yield first
        try:
            async for chunk in chunks:
                yield chunk
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            state.take_out(replica, f"stream broke: {type(exc).__name__}")
            message = f"replica {replica.name} failed mid-stream; the output is incomplete"
            yield f"data: {json.dumps({'error': {'message': message, 'code': 502}})}\n\ndata: [DONE]\n\n".encode()
    finally:
        replica.inflight -= 1
        await upstream.aclose()  # a client that left closes the upstream call: the replica aborts


async def _any_replica(state: RouterState, request: Request, path: str) -> Response:
    body = await request.body()
    for replica in state.up():
        try:
            upstream = await _send(state, replica, request, path, body, False)
        except ReplicaFailed as exc:
            state.take_out(replica, str(exc))
            continue
        return Response(upstream.content, upstream.status_code, headers=_response_headers(upstream))
    return error_response(503, "no replica is up", "service_unavailable", headers={"Retry-After": "1"})


async def _every_replica(state: RouterState, request: Request, path: str) -> Response:
    body = await request.body()
    replicas = state.up()
    if not replicas:
        return error_response(503, "no replica is up", "service_unavailable", headers={"Retry-After": "1"})
    answers = await asyncio.gather(*(_send(state, r, request, path, body, False) for r in replicas),
                                   return_exceptions=True)
    worst: httpx.Response | None = None
    merged: list[Any] = []
    for replica, answer in zip(replicas, answers):
        if isinstance(answer, BaseException):
            state.take_out(replica, str(answer))
            continue
        if worst is None or answer.status_code > worst.status_code:
            worst = answer
        if path == "/abort_request" and answer.status_code == 200:
            with contextlib.suppress(ValueError, AttributeError):
                merged.extend(answer.json().get("aborted", []))
    if worst is None:
        return error_response(503, "no replica answered", "service_unavailable", headers={"Retry-After": "1"})
    if path == "/abort_request" and worst.status_code == 200:
        return JSONResponse({"aborted": merged})
    return Response(worst.content, worst.status_code, headers=_response_headers(worst))


# -- health ---------------------------------------------------------------------------------------------
async def check_replicas(state: RouterState, timeout: float, unhealthy_after: int) -> None:
    """One round of `GET /health` on every replica."""
    assert state.http is not None

    async def one(replica: Replica) -> None:
        try:
            ok = (await state.http.get(replica.url + "/health", timeout=timeout)).status_code == 200
            refused = False
        except httpx.ConnectError:
            ok, refused = False, True
        except httpx.HTTPError:
            ok, refused = False, False
        if ok:
            state.bring_back(replica)
            return
        replica.failed_checks += 1
        if refused or replica.failed_checks >= unhealthy_after:
            state.take_out(replica, "refused the connection" if refused else
                           f"failed {replica.failed_checks} health checks")

    await asyncio.gather(*(one(r) for r in state.replicas.values()))


# -- the app --------------------------------------------------------------------------------------------
def build_router_app(urls: list[str], policy: RoutingPolicy | str = "cache_aware", *, api_key: str | None = None,
                     health_interval: float = 1.0, health_timeout: float = 5.0, unhealthy_after: int = 2,
                     max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, transport: httpx.AsyncBaseTransport | None = None,
                     **policy_options: Any) -> FastAPI:
    """The router's app over replicas at `urls`. `api_key` is the key clients must send (it is
    forwarded to the replicas, which should take the same one). `transport`: httpx's, for tests."""
    if isinstance(policy, str):
        policy = make_policy(policy, **policy_options)
    state = RouterState(urls, policy, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=64)
        timeout = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=None)
        state.http = httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)

        async def health_loop() -> None:
            while True:
                try:
                    await check_replicas(state, health_timeout, unhealthy_after)
                except Exception:  # never let the loop die
                    logger.exception("health check round failed")
                await asyncio.sleep(health_interval)

        checker = asyncio.create_task(health_loop())
        try:
            yield
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
            await state.http.aclose()

    app = FastAPI(title="sgc serve router", lifespan=lifespan)
    app.state.router = state

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.get("/health")
    async def health() -> Response:
        if not state.up():
            return error_response(503, "no replica is up", "service_unavailable")
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/router/replicas")
    async def replicas() -> dict:
        return {"policy": state.policy.name, "replicas": [
            {"name": r.name, "url": r.url, "up": r.up, "inflight": r.inflight} for r in state.replicas.values()]}

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request) -> Response:
        path = "/" + path
        if request.method == "POST" and (path in _ROUTED_POSTS or path.startswith("/programs/")):
            return await route_request(state, request, path)
        if request.method == "POST" and path in _BROADCAST_POSTS:
            return await _every_replica(state, request, path)
        return await _any_replica(state, request, path)

    return app


class _Guard:
    """Plain ASGI middleware (streams pass untouched): the API key and the body size bound (a chunked
    body is read here, bounded, and replayed)."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = None
        if self.api_key is not None and scope["path"] not in ("/health", "/health_generate"):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                refusal = error_response(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                         "authentication_error")
        too_large = error_response(413, f"request body larger than {self.max_body_bytes} bytes", "request_too_large")
        length = headers.get(b"content-length")
        if refusal is None and length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            refusal = too_large
        if refusal is None and length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            try:
                replayed = await buffer_body(receive, self.max_body_bytes)
            except BodyTooLarge:
                refusal = too_large
            else:
                if replayed is None:
                    return  # the client left
                receive = replayed
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


