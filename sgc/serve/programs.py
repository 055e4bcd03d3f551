"""Compiled programs as endpoints: `POST /programs/{name}/run` and `/programs/{name}/run_batch`.

`sgc serve --program qa.sgc` loads each artifact once at start (`sgc.load`: its constraint tables
checked against the model's vocabulary, or recompiled for it) and serves it under its file's stem.
A run executes on a worker thread with the graph executor over the same runtime client the other
routes use. `GET /programs` lists them with their functions and arguments. `/run` with `"stream":
true` sends the text as it is appended (`data: {"text": piece}` events), then the result as one event,
then `data: [DONE]`.

A run whose HTTP client leaves is cancelled, like every other route's requests: the handler polls
`request.is_disconnected()` while the worker thread runs (a stream also notices when Starlette
cancels its body), then flips the run's `Cancellation` (executor/program/graph_run.py): its engine
requests are aborted (their KV freed), no further node runs, and each unfinished instance is counted
as `sgc_program_runs{outcome="cancelled"}` (plus one `sgc_client_disconnects`); a non-streamed one
answers 499. Other runs on the engine are untouched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from compiler.errors import ProgramError
from executor.program.graph_run import CANCELLED, Cancellation
from sgc.serve.core import SSE_DONE, ApiError, ClientGone, ServerState, SSEResponse, sse
from sgc.serve.protocol import ErrorResponse, ProgramRunRequest, ProgramRunResponse

__all__ = ["add_program_routes"]

_SAMPLING = ("max_new_tokens", "temperature", "top_p", "top_k", "stop")
_DISCONNECT_POLL_S = 0.25  # how often a running program checks that its HTTP client is still there
_GONE = "the client disconnected"
T = TypeVar("T")
logger = logging.getLogger("sgc.serve")


def _outcome(result: dict[str, Any], cancelled: bool) -> str:
    if not result["error"]:
        return "ok"
    return "cancelled" if cancelled and CANCELLED in result["error"] else "error"


async def _run_watched(state: ServerState, name: str, request: Request,
                       work: Callable[[Cancellation], T]) -> tuple[T, bool]:
    """Run `work` on a worker thread; cancel its run if the client disconnects (or this handler is
    cancelled) meanwhile. Returns its result and whether the client left."""
    cancel = Cancellation()
    task = asyncio.ensure_future(asyncio.to_thread(work, cancel))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result(), cancel.cancelled
            if not cancel.cancelled and await request.is_disconnected():
                _cancel(state, name, cancel)
    except asyncio.CancelledError:  # the server stops, or the ASGI server dropped the handler
        _cancel(state, name, cancel)
        raise


def _cancel(state: ServerState, name: str, cancel: Cancellation) -> None:
    if not cancel.cancelled:
        cancel.cancel(_GONE)
        state.metrics.disconnects.inc()
        logger.info("client disconnected: cancelled a run of program %s", name)


def _function(state: ServerState, name: str, function: str | None) -> Any:
    program = state.programs.get(name)
    if program is None:
        raise ApiError(404, f"no program {name!r} (served: {', '.join(sorted(state.programs)) or 'none'})",
                       "not_found_error")
    functions = program.functions
    if function is None:
        if len(functions) != 1:
            raise ApiError(400, f"program {name!r} has several functions; give one of {sorted(functions)} "
                                "as 'function'", param="function")
        function = next(iter(functions))
    if function not in functions:
        raise ApiError(404, f"program {name!r} has no function {function!r} (functions: {sorted(functions)})",
                       "not_found_error", "function")
    return functions[function]


def _check_arguments(fn: Any, arguments: dict[str, Any]) -> None:
    unknown = sorted(set(arguments) - set(fn.arg_names))
    missing = sorted(set(fn.arg_names) - set(arguments))
    if unknown or missing:
        raise ApiError(400, f"{fn.name}({', '.join(fn.arg_names)}): "
                            + "; ".join(x for x in (f"unknown arguments {unknown}" if unknown else "",
                                                    f"missing arguments {missing}" if missing else "") if x),
                       param="arguments")


def _state_result(state: Any) -> dict[str, Any]:
    error = state.error()
    if error is not None:
        return {"text": None, "variables": None, "error": str(error)}
    snap = state.snapshot()
    return {"text": snap["text"], "variables": snap["variables"], "messages": snap["messages"], "error": None}


def add_program_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/programs")
    async def programs() -> dict:
        return {name: {fn.name: fn.arg_names for fn in program} for name, program in state.programs.items()}

    def options(body: ProgramRunRequest) -> dict[str, Any]:
        return {k: getattr(body, k) for k in _SAMPLING if getattr(body, k) is not None}

    @app.post("/programs/{name}/run", response_model=ProgramRunResponse,
              responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def run(name: str, body: ProgramRunRequest, request: Request) -> Any:
        state.check_ready()
        fn = _function(state, name, body.function)
        _check_arguments(fn, body.arguments)
        if body.stream:
            return _stream_run(state, name, fn, body.arguments, options(body), request)

        def work(cancel: Cancellation) -> dict[str, Any]:
            try:
                result = fn.run_arguments(body.arguments, cancel=cancel, **options(body))
                result.sync()
            except (ValueError, TypeError, ProgramError) as exc:  # the program failed (or was cancelled)
                return {"text": None, "variables": None, "error": str(exc)}
            return _state_result(result)

        result, gone = await _run_watched(state, name, request, work)
        state.metrics.program_runs.labels(name, _outcome(result, gone)).inc()
        if gone:
            raise ClientGone()
        return result

    @app.post("/programs/{name}/run_batch", responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def run_batch(name: str, body: ProgramRunRequest, request: Request) -> dict:
        state.check_ready()
        fn = _function(state, name, body.function)
        if not body.batch:
            raise ApiError(400, "run_batch needs 'batch', a non-empty list of argument objects", param="batch")
        if len(body.batch) > state.max_queued:
            raise ApiError(400, f"a batch may have at most {state.max_queued} instances", param="batch")
        for arguments in body.batch:
            _check_arguments(fn, arguments)

        def work(cancel: Cancellation) -> list[dict[str, Any]]:
            return [_state_result(s) for s in fn.run_batch(body.batch, **options(body), cancel=cancel)]

        results, gone = await _run_watched(state, name, request, work)
        for r in results:
            state.metrics.program_runs.labels(name, _outcome(r, gone)).inc()
        if gone:
            raise ClientGone()
        return {"results": results}


def _stream_run(state: ServerState, name: str, fn: Any, arguments: dict[str, Any],
                options: dict[str, Any], request: Request) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = Cancellation()

    def put(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed: nobody is listening
            pass

    def work() -> None:
        try:
            result = fn.run_arguments(arguments, stream=True, cancel=cancel, **options)
            for piece in result.text_iter():
                put("text", piece)
            put("done", _state_result(result))
        except Exception as exc:  # the program's error is its result
            put("done", {"text": None, "variables": None, "error": str(exc)})

    counted: list[bool] = []

    async def body() -> AsyncIterator[str]:
        threading.Thread(target=work, name=f"sgc-program-{name}", daemon=True).start()
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), _DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return  # _ProgramStream cancels the run
                continue
            if kind == "text":
                if value:
                    yield sse({"text": value})
                continue
            state.metrics.program_runs.labels(name, _outcome(value, False)).inc()
            counted.append(True)
            yield sse(value)
            yield SSE_DONE
            return

    def on_end() -> None:  # the response ended before the result was sent: the client left
        if not counted:
            _cancel(state, name, cancel)
            state.metrics.program_runs.labels(name, "cancelled").inc()

    return SSEResponse(body(), on_end)


