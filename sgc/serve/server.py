"""`sgc serve`: start the engine, warm it up, serve HTTP until SIGINT/SIGTERM, drain, exit 0.

Lifetime:
1. the engine starts (`sgc.Runtime(model_path).engine`), each `--program` artifact is loaded once;
2. one short generation warms the runtime up (the first step allocates and compiles); until it has
   run `/health` answers 503;
3. uvicorn serves on `--host` (127.0.0.1 unless told otherwise) and `--port`;
4. on SIGINT or SIGTERM the server stops taking requests (new ones and `/health` get 503, the
   listening socket closes), in-flight requests finish within `--grace-period` seconds; those still
   running then are aborted (their clients get what was generated so far, finish_reason `abort`);
5. the engine shuts down and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["serve"]

logger = logging.getLogger("sgc.serve")


def serve(model: str = "smollm2-135m-instruct", *, host: str = "127.0.0.1", port: int = 30000,
          programs: list[str] | None = None, api_key: str | None = None, device: str = "auto",
          grace_period: float = 10.0, max_queued: int | None = None, served_model_name: str | None = None,
          max_body_bytes: int | None = None, log_level: str = "info", **engine_kwargs: Any) -> int:
    import uvicorn

    from sgc.loader import load
    from sgc.runtime import Runtime
    from sgc.serve.app import build_app
    from sgc.serve.core import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUED

    started = time.perf_counter()
    runtime = Runtime(model_path=model, device=device, **engine_kwargs)
    engine = runtime.engine
    loaded = {}
    for path in programs or ():
        name = Path(path).stem
        if name in loaded:
            raise ValueError(f"two programs are named {name!r} (programs are served by their file's stem)")
        loaded[name] = load(path, backend=runtime)
    app = build_app(engine, model_name=served_model_name or Path(model).name.removesuffix(".gguf"),
                    model_path=str(engine.model_folder), tokenizer_path=str(engine.model_folder), api_key=api_key,
                    max_queued=DEFAULT_MAX_QUEUED if max_queued is None else max_queued,
                    max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES, programs=loaded, ready=False)
    state = app.state.sgc
    _warm_up(engine)
    state.status = "ready"
    logger.info("engine ready in %.1f s", time.perf_counter() - started)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if state.status != "draining":
                state.status = "draining"
                logger.info("signal %s: no new requests; %d in flight get %.0f s to finish",
                            signal.Signals(sig).name, len(state.inflight), grace_period)
            super().handle_exit(sig, frame)
            # uvicorn re-raises a captured signal after its shutdown (the process would die of it);
            # `sgc serve` drains and exits 0 instead.
            self._captured_signals.clear()

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=grace_period, lifespan="off")
    server = _Server(config)
    print(f"sgc serve: {state.model_name} on http://{host}:{port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        state.status = "draining"
        for handle in list(state.inflight.values()):  # whatever outlived the grace period
            handle.abort()
        runtime.shutdown()
    if not server.started:
        raise OSError(f"could not serve on {host}:{port} (is the port taken?)")
    print("sgc serve: stopped", file=sys.stderr, flush=True)
    return 0


def _warm_up(engine: Any) -> None:
    """One short generation (the first step allocates the runtime's buffers), then an empty cache."""
    from executor.runtime.runtime_client import GenerateRequest

    ids = engine.tokenizer.encode("Hello") or [0]
    engine.send(GenerateRequest(ids, {"max_new_tokens": 2, "temperature": 0})).result(timeout=300)
    engine.flush_cache()
