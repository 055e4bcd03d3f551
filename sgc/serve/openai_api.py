"""The OpenAI-compatible routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`.

OpenAI's fields map onto SGLang's sampling parameters (`max_tokens` / `max_completion_tokens` ->
`max_new_tokens`, `min_tokens` -> `min_new_tokens`, `response_format` -> `json_schema`; `json_object`
is the schema `{"type": "object"}`), plus the extensions SGLang and vLLM accept in the body (`regex`,
`json_schema`, `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`, `stop_token_ids`). Defaults are
OpenAI's (temperature 1, completions `max_tokens` 16, chat up to the context). Chat prompts are the
tokenizer's own chat template. Streams are SSE chunks ending with `data: [DONE]`; with logprobs, a
choice's logprobs come in its last chunk. Fields sgc cannot honour (tools, logit_bias, echo, suffix,
best_of) are refused with 400, never ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from executor.runtime.runtime_client import GenerateRequest, LogprobOptions
from sgc.serve.core import (
    SSE_DONE,
    ApiError,
    ClientGone,
    ServerState,
    SSEResponse,
    error_response,
    run_requests,
    sse,
    stream_requests,
)
from sgc.serve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelList,
)

__all__ = ["add_openai_routes"]

_ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
           503: {"model": ErrorResponse}}


def _check_model(state: ServerState, model: str | None) -> None:
    if model is not None and model not in (state.model_name, state.model_path):
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {state.model_name!r}",
                       "not_found_error", "model")


def _sampling(body: Any, max_new_tokens: int) -> dict[str, Any]:
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported by sgc", param="logit_bias")
    params: dict[str, Any] = {"max_new_tokens": max_new_tokens,
                              "temperature": 1.0 if body.temperature is None else body.temperature}
    for ours, theirs in (("top_p", "top_p"), ("stop", "stop"), ("seed", "seed"), ("top_k", "top_k"),
                         ("min_p", "min_p"), ("min_new_tokens", "min_tokens"),
                         ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"),
                         ("repetition_penalty", "repetition_penalty"), ("ignore_eos", "ignore_eos"),
                         ("stop_token_ids", "stop_token_ids"), ("skip_special_tokens", "skip_special_tokens"),
                         ("regex", "regex")):
        value = getattr(body, theirs)
        if value is not None:
            params[ours] = value
    schema = body.json_schema
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        if schema is not None or body.regex is not None:
            raise ApiError(400, "response_format cannot be combined with regex or json_schema",
                           param="response_format")
        if fmt.type == "json_object":
            schema = {"type": "object"}
        else:
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise ApiError(400, "response_format json_schema needs json_schema.schema",
                               param="response_format")
            schema = fmt.json_schema.schema_
    if schema is not None:
        params["json_schema"] = schema if isinstance(schema, str) else json.dumps(schema)
    return params


def _finish(meta: dict) -> tuple[str | None, Any]:
    reason = meta.get("finish_reason") or {}
    kind = reason.get("type")
    return {"stop": "stop", "length": "length", "abort": "abort"}.get(kind, kind), reason.get("matched")


def _usage(results: list[dict], prompt_counts: list[int]) -> dict[str, int]:
    """Usage as OpenAI counts it: each prompt once (not once per sample), every completion."""
    prompt = sum(prompt_counts)
    completion = sum(r["meta_info"].get("completion_tokens", 0) for r in results)
    cached = min(prompt, sum(r["meta_info"].get("cached_tokens", 0) for r in results))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _token_text(tok: Any, tid: int) -> str:
    return tok.decode([tid], skip_special_tokens=False)


def _completion_logprobs(tok: Any, meta: dict, top: int) -> dict[str, Any] | None:
    entries = meta.get("output_token_logprobs")
    if entries is None:
        return None
    tops = meta.get("output_top_logprobs") or [None] * len(entries)
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = 0
    for (lp, tid, *_), alternatives in zip(entries, tops):
        text = _token_text(tok, tid)
        tokens.append(text)
        token_logprobs.append(lp)
        offsets.append(offset)
        offset += len(text)
        if top:
            top_logprobs.append({_token_text(tok, a[1]): a[0] for a in (alternatives or [])[:top]})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs if top else None,
            "text_offset": offsets}


def _chat_logprobs(tok: Any, meta: dict, top: int) -> dict[str, Any] | None:
    entries = meta.get("output_token_logprobs")
    if entries is None:
        return None
    tops = meta.get("output_top_logprobs") or [None] * len(entries)
    content = []
    for (lp, tid, *_), alternatives in zip(entries, tops):
        text = _token_text(tok, tid)
        content.append({"token": text, "logprob": lp, "bytes": list(text.encode("utf-8")),
                        "top_logprobs": [{"token": (t := _token_text(tok, a[1])), "logprob": a[0],
                                          "bytes": list(t.encode("utf-8"))} for a in (alternatives or [])[:top]]})
    return {"content": content}


def _chat_prompt(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    messages = []
    for i, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise ApiError(400, f"messages[{i}]: content parts of type {part.type!r} are not supported "
                                        "(sgc serves text-only models)", param="messages")
                parts.append(part.text)
            content = "".join(parts)
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": content or ""})
    tok = state.client.tokenizer
    try:
        text = tok.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as exc:  # a template that raises on these messages (roles out of order, ...)
        raise ApiError(400, f"the model's chat template refused these messages: {exc}", param="messages") from None
    return tok.encode(text)


def _check_prompt(state: ServerState, ids: list[int], param: str) -> None:
    context = state.client.info().context_len
    if not ids:
        raise ApiError(400, "the prompt is empty", param=param)
    if len(ids) >= context:
        raise ApiError(400, f"the prompt has {len(ids)} tokens but the model's context is {context}", param=param)


def add_openai_routes(app: FastAPI, state: ServerState) -> None:
    client = state.client

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> dict:
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "sgc", "root": state.model_path,
                                            "max_model_len": client.info().context_len}]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        _check_model(state, model_id)
        return (await models())["data"][0]

    @app.post("/v1/completions", response_model=CompletionResponse, responses=_ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        _check_model(state, body.model)
        for name, bad in (("echo", body.echo), ("suffix", body.suffix is not None),
                          ("best_of", body.best_of not in (None, body.n))):
            if bad:
                raise ApiError(400, f"{name} is not supported by sgc", param=name)
        prompt = body.prompt
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]
        else:
            prompts = list(prompt)
        if not prompts:
            raise ApiError(400, "prompt is an empty list", param="prompt")
        tok = client.tokenizer
        id_lists = [tok.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        for ids in id_lists:
            _check_prompt(state, ids, "prompt")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        if max_tokens < 1:
            raise ApiError(400, f"max_tokens={max_tokens}: must be at least 1", param="max_tokens")
        params = _sampling(body, max_tokens)
        top = body.logprobs or 0
        options = LogprobOptions(return_logprob=body.logprobs is not None, top_logprobs_num=top)
        requests = [GenerateRequest(ids, params, options, stream=body.stream) for ids in id_lists
                    for _ in range(body.n)]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.stream:
            results = await run_requests(state, requests, request, "/v1/completions")
            choices = []
            for index, result in enumerate(results):
                reason, matched = _finish(result["meta_info"])
                choices.append({"index": index, "text": result["text"], "finish_reason": reason,
                                "matched_stop": matched,
                                "logprobs": _completion_logprobs(tok, result["meta_info"], top)})
            return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                    "choices": choices, "usage": _usage(results, [len(ids) for ids in id_lists])}

        def chunk(choices: list[dict], usage: dict | None = None) -> str:
            data: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created,
                                    "model": state.model_name, "choices": choices}
            if usage is not None:
                data["usage"] = usage
            return sse(data)

        async def events(handles: list[Any]) -> AsyncIterator[str]:
            results: list[dict] = []
            async for index, delta, result in stream_requests(state, requests, request, handles, "/v1/completions"):
                if result is None:
                    yield chunk([{"index": index, "text": delta, "logprobs": None, "finish_reason": None}])
                else:
                    results.append(result)
                    reason, matched = _finish(result["meta_info"])
                    yield chunk([{"index": index, "text": "", "finish_reason": reason, "matched_stop": matched,
                                  "logprobs": _completion_logprobs(tok, result["meta_info"], top)}])
            if body.stream_options is not None and body.stream_options.include_usage:
                yield chunk([], _usage(results, [len(ids) for ids in id_lists]))
            yield SSE_DONE

        return await _start_stream(state, events)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        _check_model(state, body.model)
        for name in ("tools", "functions"):
            if getattr(body, name):
                raise ApiError(400, f"{name} (function calling) is not supported by sgc", param=name)
        if body.top_logprobs and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        ids = _chat_prompt(state, body)
        _check_prompt(state, ids, "messages")
        context = client.info().context_len
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is None:
            max_tokens = context - len(ids)
        if max_tokens < 1:
            raise ApiError(400, f"max_tokens={max_tokens}: must be at least 1", param="max_tokens")
        params = _sampling(body, max_tokens)
        top = body.top_logprobs or 0
        options = LogprobOptions(return_logprob=body.logprobs, top_logprobs_num=top)
        requests = [GenerateRequest(ids, params, options, stream=body.stream) for _ in range(body.n)]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        tok = client.tokenizer
        if not body.stream:
            results = await run_requests(state, requests, request, "/v1/chat/completions")
            choices = []
            for index, result in enumerate(results):
                reason, matched = _finish(result["meta_info"])
                choices.append({"index": index, "message": {"role": "assistant", "content": result["text"]},
                                "finish_reason": reason, "matched_stop": matched,
                                "logprobs": _chat_logprobs(tok, result["meta_info"], top) if body.logprobs else None})
            return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
                    "choices": choices, "usage": _usage(results, [len(ids)])}

        def chunk(choices: list[dict], usage: dict | None = None) -> str:
            data: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created,
                                    "model": state.model_name, "choices": choices}
            if usage is not None:
                data["usage"] = usage
            return sse(data)

        async def events(handles: list[Any]) -> AsyncIterator[str]:
            results: list[dict] = []
            started = [False] * body.n
            async for index, delta, result in stream_requests(state, requests, request, handles,
                                                              "/v1/chat/completions"):
                if not started[index]:
                    started[index] = True
                    yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}])
                if result is None:
                    yield chunk([{"index": index, "delta": {"content": delta}, "logprobs": None,
                                  "finish_reason": None}])
                else:
                    results.append(result)
                    reason, matched = _finish(result["meta_info"])
                    logprobs = _chat_logprobs(tok, result["meta_info"], top) if body.logprobs else None
                    yield chunk([{"index": index, "delta": {}, "logprobs": logprobs, "finish_reason": reason,
                                  "matched_stop": matched}])
            if body.stream_options is not None and body.stream_options.include_usage:
                yield chunk([], _usage(results, [len(ids)]))
            yield SSE_DONE

        return await _start_stream(state, events)


async def _start_stream(state: ServerState, events: Any) -> Any:
    """Start the event generator: a refusal before the first event is a plain error response."""
    handles: list[Any] = []
    gen = events(handles)
    try:
        first = await gen.__anext__()
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.headers)
    except ClientGone:
        return error_response(499, "client closed the request", "client_closed_request")

    async def rest() -> AsyncIterator[str]:
        yield first
        try:
            async for item in gen:
                yield item
        except ApiError as exc:
            yield sse({"error": {"message": exc.message, "type": exc.type, "code": exc.status}})
            yield SSE_DONE
        except ClientGone:
            return

    return SSEResponse(rest(), lambda: state.forget(handles))
