"""Compiled programs as endpoints: `POST /programs/{name}/run` and `/programs/{name}/run_batch`.

`sgc serve --program qa.sgc` loads each artifact once at start (`sgc.load`: its constraint tables
checked against the model's vocabulary, or recompiled for it) and serves it under its file's stem.
A run executes on a worker thread with the graph executor over the same runtime client the other
routes use. `GET /programs` lists them with their functions and arguments.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from sgc.serve.core import ApiError, ServerState
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
    async def run(name: str, body: ProgramRunRequest) -> dict:
        state.check_ready()
        fn = _function(state, name, body.function)
        _check_arguments(fn, body.arguments)

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
