"""Compiled programs as endpoints: `POST /programs/{name}/run` and `/programs/{name}/run_batch`.

`sgc serve --program qa.sgc` loads each artifact once at start (`sgc.load`: its constraint tables
checked against the model's vocabulary, or recompiled for it) and serves it under its file's stem.
A run executes on a worker thread with the graph executor over the same runtime client the other
routes use. `GET /programs` lists them with their functions and arguments. `/run` with `"stream":
true` sends the text as it is appended (`data: {"text": piece}` events), then the result as one event,
then `data: [DONE]`; a program run is not aborted when its client leaves (it finishes on its own).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from sgc.serve.core import SSE_DONE, ApiError, ServerState, sse
from sgc.serve.protocol import ErrorResponse, ProgramRunRequest, ProgramRunResponse

__all__ = ["add_program_routes"]

_SAMPLING = ("max_new_tokens", "temperature", "top_p", "top_k", "stop")


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
    async def run(name: str, body: ProgramRunRequest) -> Any:
        state.check_ready()
        fn = _function(state, name, body.function)
        _check_arguments(fn, body.arguments)
        if body.stream:
            return _stream_run(state, name, fn, body.arguments, options(body))

        def work() -> dict[str, Any]:
            try:
                result = fn.run(**body.arguments, **options(body))
                result.sync()
            except (ValueError, TypeError) as exc:
                return {"text": None, "variables": None, "error": str(exc)}
            return _state_result(result)

        result = await asyncio.to_thread(work)
        state.metrics.program_runs.labels(name, "error" if result["error"] else "ok").inc()
        return result

    @app.post("/programs/{name}/run_batch", responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def run_batch(name: str, body: ProgramRunRequest) -> dict:
        state.check_ready()
        fn = _function(state, name, body.function)
        if not body.batch:
            raise ApiError(400, "run_batch needs 'batch', a non-empty list of argument objects", param="batch")
        if len(body.batch) > state.max_queued:
            raise ApiError(400, f"a batch may have at most {state.max_queued} instances", param="batch")
        for arguments in body.batch:
            _check_arguments(fn, arguments)

        def work() -> list[dict[str, Any]]:
            return [_state_result(s) for s in fn.run_batch(body.batch, **options(body))]

        results = await asyncio.to_thread(work)
        for r in results:
            state.metrics.program_runs.labels(name, "error" if r["error"] else "ok").inc()
        return {"results": results}


def _stream_run(state: ServerState, name: str, fn: Any, arguments: dict[str, Any],
                options: dict[str, Any]) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed: nobody is listening
            pass

    def work() -> None:
        try:
            result = fn.run(stream=True, **arguments, **options)
            for piece in result.text_iter():
                put("text", piece)
            put("done", _state_result(result))
        except Exception as exc:  # the program's error is its result
            put("done", {"text": None, "variables": None, "error": str(exc)})

    threading.Thread(target=work, name=f"sgc-program-{name}", daemon=True).start()

    async def body() -> AsyncIterator[str]:
        while True:
            kind, value = await events.get()
            if kind == "text":
                if value:
                    yield sse({"text": value})
                continue
            state.metrics.program_runs.labels(name, "error" if value["error"] else "ok").inc()
            yield sse(value)
            yield SSE_DONE
            return

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
