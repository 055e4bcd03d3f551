"""The FastAPI application of `sgc serve`: SGLang's native routes, OpenAI's, operations.

The app holds a runtime client (`executor.runtime.runtime_client.RuntimeClient`) and nothing else of the
runtime: prompts are tokenized with `client.tokenizer`, requests go out as `GenerateRequest` /
`ScoreRequest` through `client.group()`, progress comes back through handle listeners (on the
runtime's thread, bridged onto the event loop with `call_soon_threadsafe`), and `/flush_cache`,
`/get_server_info`, `/metrics` use `flush_cache`, `info` and `stats`. Any client implementation
(the in-process `Engine`, `HTTPRuntimeClient` to another server) can sit behind it.

Every request is checked before anything is queued: a bad body, an unknown sampling parameter, a
prompt outside the vocabulary or the context is a 400 with a JSON message naming it (OpenAI's error
shape, of which SGLang's `{"error": {"message"}}` is a subset). A request whose HTTP client goes
away (disconnect, cancelled stream) is aborted, which frees its KV (computed prefixes stay cached).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from executor.runtime.runtime_client import (
    GenerateRequest,
    LogprobOptions,
    RequestError,
    RuntimeClient,
    ScoreRequest,
)
from sgc.serve.core import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUED,
    SSE_DONE,
    ApiError,
    BodyTooLarge,
    ClientGone,
    ServerState,
    SSEResponse,
    buffer_body,
    error_response,
    run_requests,
    sse,
    stream_requests,
)
from sgc.serve.metrics import ServerMetrics
from sgc.serve.openai_api import add_openai_routes
from sgc.serve.programs import add_program_routes
from sgc.serve.protocol import (
    AbortRequest,
    ErrorResponse,
    GenerateReqInput,
    GenerateResult,
    ModelInfo,
    ScoreReqInput,
    ScoreResult,
    ServerInfo,
)

logger = logging.getLogger("sgc.serve")

__all__ = ["build_app"]


# -- prompts and parameters ----------------------------------------------------------------------------
def encode_text(state: ServerState, text: str) -> list[int]:
    if not isinstance(text, str) or not text:
        raise ApiError(400, "the prompt is empty", param="text")
    return state.client.tokenizer.encode(text)


def _per_prompt(value: Any, count: int, name: str) -> list[Any]:
    if isinstance(value, list):
        if len(value) != count:
            raise ApiError(400, f"{name} has {len(value)} entries for {count} prompts", param=name)
        return value
    return [value] * count


def native_requests(state: ServerState, body: GenerateReqInput, stream: bool) -> tuple[list[GenerateRequest],
                                                                                          list[dict], bool]:
    """`/generate`'s requests (prompt-major, n per prompt), per request its post-processing, and
    whether the response is a list."""
    for name in ("image_data", "lora_path", "token_ids_logprob"):
        if getattr(body, name) is not None:
            raise ApiError(400, f"{name} is not supported by sgc", param=name)
    if (body.text is None) == (body.input_ids is None):
        raise ApiError(400, "give exactly one of text and input_ids", param="text")
    if body.text is not None:
        batched = isinstance(body.text, list)
        texts = body.text if batched else [body.text]
        if not texts:
            raise ApiError(400, "text is an empty list", param="text")
        prompts = [encode_text(state, t) for t in texts]
    else:
        ids = body.input_ids or []
        batched = bool(ids) and isinstance(ids[0], list)
        prompts = [list(p) for p in ids] if batched else [list(ids)]
        if not prompts or any(not p for p in prompts):
            raise ApiError(400, "input_ids is empty", param="input_ids")
    count = len(prompts)
    params_list = _per_prompt(body.sampling_params, count, "sampling_params")
    rids = _per_prompt(body.rid, count, "rid")
    return_logprob = _per_prompt(body.return_logprob, count, "return_logprob")
    start_len = _per_prompt(body.logprob_start_len, count, "logprob_start_len")
    top_num = _per_prompt(body.top_logprobs_num, count, "top_logprobs_num")
    requests: list[GenerateRequest] = []
    post: list[dict] = []
    for i, ids in enumerate(prompts):
        if params_list[i] is not None and not isinstance(params_list[i], dict):
            raise ApiError(400, "sampling_params must be an object", param="sampling_params")
        # SGLang's frontend sends every parameter, None meaning "not set" (stop_regex among them).
        params = {k: v for k, v in (params_list[i] or {}).items() if v is not None}
        if not params.get("stop_regex", True):
            params.pop("stop_regex")  # SGLang's frontend sends an empty one
        n = params.pop("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            raise ApiError(400, f"invalid sampling parameter n={n!r}: must be an integer in [1, 128]", param="n")
        if n > 1:
            batched = True
        for name in ("spaces_between_special_tokens", "stream_interval"):
            params.pop(name, None)  # presentation knobs sgc has no use for
        prefill_only = params.get("max_new_tokens") == 0 and not isinstance(params.get("max_new_tokens"), bool)
        if prefill_only:
            # max_new_tokens=0 (prefill only: SGLang's frontend warms the prefix cache and reads prompt
            # logprobs this way). The engine always samples a token; one is made and dropped.
            params["max_new_tokens"] = 1
            for name in ("regex", "json_schema", "min_new_tokens", "ebnf"):
                params.pop(name, None)
        options = LogprobOptions(return_logprob=return_logprob[i], logprob_start_len=start_len[i],
                                 top_logprobs_num=top_num[i])
        try:
            options.validate()
        except RequestError as exc:
            raise ApiError(400, str(exc)) from None
        for _ in range(n):
            requests.append(GenerateRequest(ids, params, options, stream=stream))
            post.append({"prefill_only": prefill_only, "text_in_logprobs": body.return_text_in_logprobs,
                         "rid": rids[i]})
    return requests, post, batched or count > 1


def _logprob_entries(entries: Any, tokenizer: Any, with_text: bool) -> Any:
    if entries is None:
        return None
    out = []
    for entry in entries:
        if entry is None:
            out.append(None)
        elif isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], (list, tuple)):
            out.append(_logprob_entries(entry, tokenizer, with_text))  # a top-logprobs list
        else:
            lp, tid = entry[0], entry[1]
            out.append([lp, tid, tokenizer.decode([tid], skip_special_tokens=False) if with_text else None])
    return out


def native_result(state: ServerState, result: dict, post: dict) -> dict:
    """An engine result as SGLang's /generate returns it."""
    meta = dict(result["meta_info"])
    tok = state.client.tokenizer
    text, output_ids = result.get("text", ""), list(result.get("output_ids", []))
    if post["prefill_only"]:
        text, output_ids = "", []
        meta["completion_tokens"] = 0
        if meta.get("finish_reason", {}).get("type") != "abort":
            meta["finish_reason"] = {"type": "length", "length": 0}
        for name in ("output_token_logprobs", "output_top_logprobs"):
            if name in meta:
                meta[name] = []
    for name in ("input_token_logprobs", "output_token_logprobs", "input_top_logprobs", "output_top_logprobs"):
        if name in meta:
            meta[name] = _logprob_entries(meta[name], tok, post["text_in_logprobs"])
    return {"text": text, "output_ids": output_ids, "meta_info": meta}


# -- the app -------------------------------------------------------------------------------------------
def build_app(client: RuntimeClient, *, model_name: str | None = None, model_path: str | None = None,
              tokenizer_path: str | None = None, api_key: str | None = None, max_queued: int = DEFAULT_MAX_QUEUED,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, programs: dict[str, Any] | None = None,
              ready: bool = True) -> FastAPI:
    """The server's app over `client`. `ready=False` answers 503 until `app.state.sgc.status = "ready"`."""
    from compiler.version import __version__

    info = client.info()
    path = model_path or info.model_path
    state = ServerState(client=client, model_name=model_name or path.rstrip("/").rsplit("/", 1)[-1],
                        model_path=path, tokenizer_path=tokenizer_path or path, max_queued=max_queued,
                        api_key=api_key, programs=dict(programs or {}))
    state.status = "ready" if ready else "starting"
    state.metrics = ServerMetrics(state)
    app = FastAPI(title="sgc serve", version=__version__,
                  description="sgc's HTTP server: SGLang's native API and the OpenAI-compatible API "
                              "(docs/serve.md).")
    app.state.sgc = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = list(first.get("loc", ()))
        where = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] and len(loc) > 1 else loc))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON ({first.get('msg', '')}, at character {loc[-1]})"
            where = ""
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more error{'s' * (len(errors) > 2)})"
        return error_response(400, message, param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        return error_response(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        return error_response(499, "client closed the request", "client_closed_request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error (see the server's log)", "internal_error")

    app.add_middleware(_Guard, state=state, max_body_bytes=max_body_bytes)

    # -- SGLang-native routes ------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        if state.status != "ready" or not client.is_alive():
            return error_response(503, f"the server is {state.status if client.is_alive() else 'stopped'}",
                                  "service_unavailable")
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate(request: Request) -> Response:
        """A real one-token generation (503 while starting or shutting down)."""
        if state.status != "ready" or not client.is_alive():
            return error_response(503, f"the server is {state.status}", "service_unavailable")
        ids = client.tokenizer.encode("ping") or [0]
        await run_requests(state, [GenerateRequest(ids, {"max_new_tokens": 1, "temperature": 0})], request,
                           "/health_generate")
        return Response(status_code=200)

    @app.get("/get_model_info", response_model=ModelInfo)
    async def get_model_info() -> dict:
        info = client.info()
        return {"model_path": state.model_path, "tokenizer_path": state.tokenizer_path, "is_generation": True,
                "context_len": info.context_len, "vocab_size": info.vocab_size}

    @app.get("/get_server_info", response_model=ServerInfo)
    @app.get("/server_info", response_model=ServerInfo, include_in_schema=False)
    async def get_server_info() -> dict:
        info = client.info()
        return {"version": __version__, "model_path": state.model_path, "served_model_name": state.model_name,
                "context_len": info.context_len, "num_kv_slots": info.num_kv_slots,
                "max_running_requests": info.max_running_requests, "schedule_policy": info.schedule_policy,
                "max_queued_requests": state.max_queued, "status": state.status,
                "programs": sorted(state.programs)}

    @app.post("/flush_cache")
    async def flush_cache() -> Response:
        done = await asyncio.to_thread(client.flush_cache, 30.0)
        if not done:
            return error_response(503, "the runtime did not flush its cache within 30 s", "service_unavailable")
        return PlainTextResponse("Cache flushed.\n")

    @app.post("/abort_request")
    async def abort_request(body: AbortRequest) -> dict:
        found = state.find(body.rid)
        targets = list(state.inflight.values()) if body.abort_all else ([found] if found is not None else [])
        for handle in targets:
            handle.abort()
        return {"aborted": [h.rid for h in targets]}

    @app.post("/generate", response_model=GenerateResult | list[GenerateResult],
              responses={400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def generate(body: GenerateReqInput, request: Request) -> Any:
        requests, post, as_list = native_requests(state, body, body.stream)
        rids = [p["rid"] for p in post]  # the client's ids, for /abort_request
        if not body.stream:
            results = await run_requests(state, requests, request, "/generate", rids)
            out = [native_result(state, r, p) for r, p in zip(results, post)]
            return JSONResponse(out if as_list else out[0])
        handles: list[Any] = []

        async def events() -> AsyncIterator[str]:
            texts = [""] * len(requests)
            try:
                async for index, delta, result in stream_requests(state, requests, request, handles, "/generate",
                                                                   rids):
                    if result is None:
                        if post[index]["prefill_only"]:
                            continue
                        texts[index] += delta
                        chunk: dict[str, Any] = {"text": texts[index],
                                                 "meta_info": {"id": handles[index].rid, "finish_reason": None}}
                    else:
                        chunk = native_result(state, result, post[index])
                        if "error" in result:
                            chunk["error"] = {"message": result["error"]}
                    if as_list:
                        chunk["index"] = index
                    yield sse(chunk)
                yield SSE_DONE
            except ApiError as exc:
                yield sse({"error": {"message": exc.message, "code": exc.status}})
                yield SSE_DONE
            except ClientGone:
                return

        # The first event is produced before the response starts, so a refused request is a 400.
        gen = events()
        first = await gen.__anext__()
        if first.startswith('data: {"error"') and not handles:
            err = json.loads(first[len("data: "):])["error"]
            await gen.aclose()
            return error_response(err.get("code", 400), err["message"])
        return SSEResponse(_prepend(first, gen), lambda: state.forget(handles))

    @app.post("/sgc/score", response_model=ScoreResult, responses={400: {"model": ErrorResponse}})
    async def score(body: ScoreReqInput, request: Request) -> dict:
        """The logprobs of each continuation after the prompt (sgc's `select`; token ids only)."""
        results = await run_requests(state, [ScoreRequest(body.input_ids, body.continuations)], request, "/sgc/score")
        return results[0]

    @app.get("/sgc/tokenizer")
    async def tokenizer_files() -> dict:
        """The tokenizer's files (tokenizer.json, its config, the generation config), for remote clients
        that tokenize themselves (`RuntimeEndpoint` on another machine)."""
        from pathlib import Path

        folder = Path(state.tokenizer_path or "")
        files = {}
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
            if (folder / name).is_file():
                files[name] = (folder / name).read_text(encoding="utf-8")
        if "tokenizer.json" not in files:
            raise ApiError(404, "this server's tokenizer files are not available", "not_found_error")
        return {"files": files}

    @app.get("/sgc/stats")
    async def stats() -> dict:
        """The runtime's counters (`RuntimeClient.stats`), as JSON."""
        return client.stats()

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    add_openai_routes(app, state)
    add_program_routes(app, state)
    return app


class _Guard:
    """A plain ASGI middleware (streams pass through untouched): the API key, the body size limit,
    JSON bodies whatever their declared content type, and the HTTP metrics."""

    def __init__(self, app: Any, state: ServerState, max_body_bytes: int) -> None:
        self.app, self.state, self.max_body_bytes = app, state, max_body_bytes

    async def _refuse(self, send: Any, status: int, message: str, type_: str) -> None:
        response = error_response(status, message, type_)
        await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        state = self.state
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = dict(scope["headers"])
            if state.api_key is not None and path not in ("/health", "/health_generate"):
                given = headers.get(b"authorization", b"").decode("latin-1")
                if not hmac.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                    await self._refuse(send_status, 401, "missing or wrong API key (send 'Authorization: "
                                       "Bearer <key>')", "authentication_error")
                    return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                # Bodies are JSON whatever the client declared (curl -d sends a form content type).
                scope = dict(scope)
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope["headers"].append((b"content-type", b"application/json"))
                too_large = f"request body larger than {self.max_body_bytes} bytes"
                length = headers.get(b"content-length")
                if length is not None:
                    if not length.isdigit() or int(length) > self.max_body_bytes:
                        await self._refuse(send_status, 413, too_large, "request_too_large")
                        return
                else:  # chunked: read it here, bounded, then hand it on
                    try:
                        replayed = await buffer_body(receive, self.max_body_bytes)
                    except BodyTooLarge:
                        await self._refuse(send_status, 413, too_large, "request_too_large")
                        return
                    if replayed is None:
                        return  # the client left
                    await self.app(scope, replayed, send_status)
                    return
            await self.app(scope, receive, send_status)
        finally:
            state.metrics.observe_http(path, status["code"], time.perf_counter() - started)


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for item in rest:
        yield item
