"""The runtime client interface over HTTP, and `RuntimeEndpoint`: programs run on an `sgc serve`.

`HTTPRuntimeClient(url)` implements `executor.runtime.runtime_client.RuntimeClient` with httpx against a
server's routes: a `GenerateRequest` is a streamed `POST /generate` with `input_ids` (the client
tokenizes, with the server's own tokenizer files), a `ScoreRequest` is `POST /sgc/score` (the
engine's scoring, exactly what `select` gets in process), `flush_cache`, `info`, `stats` and
`is_alive` are the matching GET/POST routes. Each request runs on a worker thread; listeners are
called on it (quick and non-blocking, as the interface asks). It also has the two calls the eager
interpreter makes (`generate`, `score`), so a program runs against it compiled or eagerly.

Where a remote runtime differs from the in-process one (`docs/serve.md`):
- constraints travel as their regex / JSON schema (the server compiles and caches them), never as
  precompiled token FSMs: `RuntimeEndpoint` compiles programs without constraint tables;
- `follow_up` and `group(after=...)` are accepted and do nothing (the server's engine never holds a
  step for a remote client), and `pin_prefix` pins nothing (`num_tokens == 0`): the server's prefix
  cache still keeps shared prefixes as long as memory allows;
- `abort()` closes the request's connection (the server aborts a request whose client left) and
  asks `POST /abort_request` by its id.

`RuntimeEndpoint(url)` is an `sgc.Runtime` whose engine is this client: with
`sgl.set_default_backend(sgl.RuntimeEndpoint(url))` an SGLang program runs on the server.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from executor.runtime.remote_handle import CollectingGroup, ThreadedHandle
from executor.runtime.runtime_client import (
    ClientRequest,
    EngineError,
    GenerateRequest,
    Listener,
    RequestError,
    RequestTypeError,
    RuntimeInfo,
    SamplingParams,
    ScoreRequest,
    SimpleCalls,
)
from sgc.runtime import Runtime

__all__ = ["HTTPRuntimeClient", "RemoteHandle", "RuntimeEndpoint"]

_DEFAULT_PARAMS = SamplingParams()


def _params_dict(params: SamplingParams | Any) -> dict[str, Any]:
    """The sampling parameters that differ from SGLang's defaults, as JSON-able values."""
    if params is None:
        return {}
    if not isinstance(params, SamplingParams):
        params = SamplingParams.from_dict(params)
    else:
        params.validate()
    out = {}
    for f in dataclasses.fields(SamplingParams):
        value = getattr(params, f.name)
        if value != getattr(_DEFAULT_PARAMS, f.name):
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _tuples(entries: Any) -> Any:
    """Logprob lists as the in-process engine gives them: (logprob, token_id, None) tuples."""
    if entries is None:
        return None
    out = []
    for entry in entries:
        if entry is None:
            out.append(None)
        elif entry and isinstance(entry[0], (list, tuple)):
            out.append(_tuples(entry))
        else:
            out.append((entry[0], entry[1], None))
    return out


class _RemotePin:
    """`pin_prefix` over HTTP pins nothing (see the module docstring)."""

    def __init__(self) -> None:
        self.num_tokens = 0
        self.released = threading.Event()


class RemoteHandle(ThreadedHandle):
    """A request sent to the server (`runtime_client.RequestHandle`)."""

    def __init__(self, client: HTTPRuntimeClient, request: ClientRequest, stream: bool) -> None:
        super().__init__(f"http-{uuid.uuid4().hex[:16]}", stream)
        self._client = client
        self.request = request
        self._abort = threading.Event()
        self._response: httpx.Response | None = None

    def abort(self) -> None:
        if self._done.is_set() or self._abort.is_set():
            return
        self._abort.set()
        self._client._abort_remote(self._rid)

    def _emit(self, delta: str) -> None:
        if delta and self._deltas is not None:  # listeners see text deltas of streaming requests only
            super()._emit(delta)

    def _aborted_result(self, text: str) -> dict[str, Any]:
        ids = list(getattr(self.request, "input_ids", []))
        meta = {"id": self._rid, "prompt_tokens": len(ids), "completion_tokens": 0, "cached_tokens": 0,
                "finish_reason": {"type": "abort", "message": "aborted by the client"}}
        if isinstance(self.request, ScoreRequest):
            return {"logprobs": [], "meta_info": meta}
        return {"text": text, "output_ids": [], "meta_info": meta}


class HTTPRuntimeClient(SimpleCalls):
    """`runtime_client.RuntimeClient` for a running `sgc serve` at `base_url` (see the module docstring)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 600.0,
                 max_concurrency: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_connections=max_concurrency + 8))
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="sgc-http")
        self._closed = False
        try:
            model = self._get("/get_model_info")
            server = self._get("/get_server_info")
        except httpx.HTTPError as exc:
            raise ConnectionError(f"no sgc server at {self.base_url}: {exc}") from None
        self.model_path = model["model_path"]
        self.model_folder = Path(self.model_path)
        self._info = RuntimeInfo(model_path=self.model_path, context_len=model["context_len"],
                                 vocab_size=model["vocab_size"], num_kv_slots=server["num_kv_slots"],
                                 max_running_requests=server["max_running_requests"],
                                 schedule_policy=server["schedule_policy"])
        self.server_info = server
        self._tokenizer = self._load_tokenizer(model.get("tokenizer_path"))

    # -- plumbing ----------------------------------------------------------------------------------
    def _get(self, path: str) -> Any:
        r = self._http.get(path)
        self._raise_for(r)
        return r.json()

    @staticmethod
    def _raise_for(r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        try:
            message = r.json()["error"]["message"]
        except Exception:
            message = r.text[:500]
        if 400 <= r.status_code < 500 and r.status_code not in (401, 403, 404, 408, 429):
            raise RequestError(message)
        raise EngineError(f"the server answered {r.status_code}: {message}")

    def _load_tokenizer(self, path: str | None) -> Any:
        from executor.runtime.tokenizer import Tokenizer

        if path and (Path(path) / "tokenizer.json").is_file():
            return Tokenizer(path)
        files = self._get("/sgc/tokenizer")["files"]
        folder = Path(tempfile.mkdtemp(prefix="sgc-tokenizer-"))
        for name, text in files.items():
            if name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
                (folder / name).write_text(text, encoding="utf-8")
        return Tokenizer(folder)

    # -- the client interface ----------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def info(self) -> RuntimeInfo:
        return self._info

    def send(self, request: ClientRequest, listener: Listener | None = None) -> RemoteHandle:
        handle = self._prepare(request, listener)
        self._start(handle)
        return handle

    def group(self, after: Iterable[Any] = ()) -> CollectingGroup:
        """The requests are sent when the block exits; `after` means nothing over HTTP (no step waits)."""
        return CollectingGroup(self._prepare, lambda handles: [self._start(h) for h in handles])

    def pin_prefix(self, token_ids: Sequence[int]) -> _RemotePin:
        return _RemotePin()

    def unpin(self, pin: Any) -> None:
        pin.released.set()

    def stats(self) -> dict[str, int]:
        return self._get("/sgc/stats")

    def flush_cache(self, timeout: float = 30.0) -> bool:
        r = self._http.post("/flush_cache", timeout=timeout + 5)
        return r.status_code == 200

    def is_alive(self) -> bool:
        if self._closed:
            return False
        try:
            return self._http.get("/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """Stop using the server (the server keeps running)."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def shutdown(self) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------------------
    def _prepare(self, request: ClientRequest, listener: Listener | None) -> RemoteHandle:
        if self._closed:
            raise EngineError("this client was closed")
        if isinstance(request, GenerateRequest):
            if request.constraint is not None:
                raise RequestError("a remote runtime compiles constraints itself: send regex / json_schema in "
                                   "the sampling parameters, not a precompiled token FSM")
            if request.then is not None:  # info().chains is False: clients send each gen themselves
                raise RequestError("this runtime does not take chained generations (GenerateRequest.then)")
            _params_dict(request.params)  # validates
            request.options.validate()
            stream = request.stream
        elif isinstance(request, ScoreRequest):
            stream = False
        else:
            raise RequestTypeError(f"a request must be a GenerateRequest or a ScoreRequest, "
                                   f"not {type(request).__name__}")
        handle = RemoteHandle(self, request, stream)
        if listener is not None:
            handle.add_listener(listener)
        return handle

    def _start(self, handle: RemoteHandle) -> None:
        try:
            self._pool.submit(self._run, handle)
        except RuntimeError as exc:  # the pool was shut down
            handle._finish(None, EngineError(f"request {handle.rid}: the client was closed ({exc})"))

    def _run(self, handle: RemoteHandle) -> None:
        try:
            if isinstance(handle.request, ScoreRequest):
                self._run_score(handle)
            else:
                self._run_generate(handle)
        except BaseException as exc:  # the handle reports it; the worker thread lives on
            if handle._abort.is_set():
                handle._finish(handle._aborted_result(""))
            elif isinstance(exc, (RequestError, EngineError)):
                handle._finish(None, exc)
            else:
                handle._finish(None, EngineError(f"request {handle.rid} failed on the way to "
                                                 f"{self.base_url}: {exc!r}"))

    def _run_score(self, handle: RemoteHandle) -> None:
        req = handle.request
        r = self._http.post("/sgc/score", json={"input_ids": list(req.input_ids),
                                                 "continuations": [list(c) for c in req.continuations]})
        self._raise_for(r)
        handle._finish(r.json())

    def _run_generate(self, handle: RemoteHandle) -> None:
        req: GenerateRequest = handle.request  # type: ignore[assignment]
        body = {"input_ids": list(req.input_ids), "sampling_params": _params_dict(req.params),
                "return_logprob": req.options.return_logprob, "logprob_start_len": req.options.logprob_start_len,
                "top_logprobs_num": req.options.top_logprobs_num, "stream": True, "rid": handle.rid}
        text = ""
        final: dict[str, Any] | None = None
        with self._http.stream("POST", "/generate", json=body) as r:
            handle._response = r
            if r.status_code >= 400:
                r.read()
                self._raise_for(r)
            for line in r.iter_lines():
                if handle._abort.is_set():
                    break
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk and "meta_info" not in chunk:
                    raise EngineError(f"request {handle.rid}: {chunk['error'].get('message')}")
                new_text = chunk.get("text", "")
                delta, text = new_text[len(text):], new_text
                if "output_ids" in chunk:
                    final = chunk
                if delta:
                    handle._emit(delta)
        if final is None:
            if handle._abort.is_set():
                handle._finish(handle._aborted_result(text))
                return
            raise EngineError(f"request {handle.rid}: the server's stream ended without a result")
        meta = dict(final["meta_info"])
        meta["id"] = handle.rid
        for name in ("input_token_logprobs", "output_token_logprobs", "input_top_logprobs", "output_top_logprobs"):
            if name in meta:
                meta[name] = _tuples(meta[name])
        if meta.get("finish_reason", {}).get("type") == "abort" and not handle._abort.is_set():
            raise EngineError(f"request {handle.rid} was aborted by the server: "
                              f"{meta['finish_reason'].get('message', '')}")
        handle._finish({"text": final["text"], "output_ids": final["output_ids"], "meta_info": meta})

    def _abort_remote(self, rid: str) -> None:
        def ask() -> None:
            try:
                self._http.post("/abort_request", json={"rid": rid}, timeout=10)
            except httpx.HTTPError:
                pass

        threading.Thread(target=ask, daemon=True).start()

    def __repr__(self) -> str:
        return f"HTTPRuntimeClient({self.base_url!r})"


class RuntimeEndpoint(Runtime):
    """SGLang's `sgl.RuntimeEndpoint(base_url)`: programs run on an `sgc serve` at `base_url`.

    Compiled (the default, as on `sgc.Runtime`) or eagerly, through `HTTPRuntimeClient`. Constraint
    tables are not compiled here: gens send their regex / schema and the server compiles them.
    """

    compiles_constraints = False

    def __init__(self, base_url: str, api_key: str | None = None, verify: Any = None, *,
                 chat_template_name: Any = None, chat_template: Any = None, disable_passes: Iterable[str] = (),
                 timeout: float = 600.0) -> None:
        super().__init__(model_path=base_url, chat_template=chat_template or chat_template_name,
                         disable_passes=disable_passes)
        self.base_url = base_url.rstrip("/")
        self._engine = HTTPRuntimeClient(base_url, api_key, timeout=timeout)
        self.model_path = self._engine.model_path

    def get_server_info(self) -> dict[str, Any]:
        return dict(self._engine.server_info)

    def get_model_name(self) -> str:
        return self.model_path

    def shutdown(self) -> None:
        """Close the connection (the server keeps running)."""
        with self._lock:
            self._compiled.clear()
            if self._engine is not None:
                self._engine.close()

    def __repr__(self) -> str:
        return f"RuntimeEndpoint({self.base_url!r})"
