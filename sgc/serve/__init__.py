"""`sgc serve`: sgc's HTTP server, and the HTTP client that runs programs against it.

- `protocol.py`: the pydantic models of every request and response (SGLang's native routes and the
  OpenAI-compatible ones), so the OpenAPI schema at `/openapi.json` is the whole surface.
- `app.py`: `build_app(client, ...)`, the FastAPI application. It talks to the runtime ONLY through
  the runtime client interface (`executor/runtime/runtime_client.py`: `send`, `group`, `stats`,
  `flush_cache`, `info`, `is_alive`, the tokenizer), so a remote client can replace the in-process
  engine later without touching a route.
- `server.py`: `sgc serve`: start the engine, warm it up, serve with uvicorn until SIGINT/SIGTERM,
  then drain (finish or abort in-flight requests within a grace period) and exit 0.
- `client.py`: `HTTPRuntimeClient`, the runtime client interface over HTTP (httpx), and
  `RuntimeEndpoint`, the `sgc.Runtime` whose engine is that client: `sgl.RuntimeEndpoint(url)`.

The server's dependencies are the `serve` extra (`pip install -e .[serve]`); nothing here is
imported by `import sgc`. `docs/serve.md` lists the endpoints and where sgc differs from SGLang and
OpenAI.
"""

__all__ = ["HTTPRuntimeClient", "RuntimeEndpoint", "build_app"]


def __getattr__(name: str):  # imported on first use: fastapi and httpx are optional
    if name == "build_app":
        from sgc.serve.app import build_app

        return build_app
    if name in ("HTTPRuntimeClient", "RuntimeEndpoint"):
        from sgc.serve import client

        return getattr(client, name)
    raise AttributeError(f"module 'sgc.serve' has no attribute {name!r}")
