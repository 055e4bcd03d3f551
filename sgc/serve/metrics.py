"""`GET /metrics`: the server's Prometheus metrics (prometheus-client, one registry per app).

HTTP requests by route and status, requests in flight (the server's own count of runtime requests it
is waiting on), rejected (503) and disconnected requests, time to first token and inter-token
latency of streamed requests, end-to-end latency, and the runtime's counters read from
`client.stats()` at scrape time (tokens in and out, cached prompt tokens, forward passes, KV use).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _RuntimeCollector:
    """Gauges and counters read from the runtime client at scrape time."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Any:
        state = self.state
        running = GaugeMetricFamily("sgc_inflight_requests", "Runtime requests the server is waiting on "
                                    "(running or queued in the runtime)")
        running.add_metric([], len(state.inflight))
        yield running
        status = GaugeMetricFamily("sgc_server_ready", "1 while the server takes requests")
        status.add_metric([], 1.0 if state.status == "ready" else 0.0)
        yield status
        try:
            stats = state.client.stats()
            info = state.client.info()
        except Exception:  # a stopped runtime: only the server's own metrics
            return
        counters = {
            "num_prompt_tokens": "Prompt tokens of finished requests",
            "num_cached_prompt_tokens": "Prompt tokens served from the prefix cache",
            "num_generated_tokens": "Generated tokens",
            "num_finished_requests": "Finished runtime requests",
            "num_forward_passes": "Model forward passes",
        }
        for key, doc in counters.items():
            if key in stats:
                family = CounterMetricFamily(f"sgc_{key}", doc)
                family.add_metric([], float(stats[key]))
                yield family
        prompt = stats.get("num_prompt_tokens", 0)
        hit = GaugeMetricFamily("sgc_cache_hit_rate", "Cached / prompt tokens over all finished requests")
        hit.add_metric([], stats.get("num_cached_prompt_tokens", 0) / prompt if prompt else 0.0)
        yield hit
        total = info.num_kv_slots
        free = stats.get("num_free_kv_slots")
        if free is not None and total:
            used = GaugeMetricFamily("sgc_kv_usage", "Fraction of KV slots in use (running requests and cache)")
            used.add_metric([], (total - free) / total)
            yield used
            cached = GaugeMetricFamily("sgc_kv_cached_tokens", "Tokens held by the prefix cache")
            cached.add_metric([], float(stats.get("num_cached_kv_tokens", 0)))
            yield cached
            slots = GaugeMetricFamily("sgc_kv_slots", "KV slots of the pool")
            slots.add_metric([], float(total))
            yield slots


class ServerMetrics:
    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter("sgc_http_requests", "HTTP requests by route and status", ["route", "status"],
                            registry=r)
        self.rejected = Counter("sgc_rejected_requests", "Requests refused with 503 (queue full)", registry=r)
        self.disconnects = Counter("sgc_client_disconnects", "Requests aborted because the client left",
                                   registry=r)
        self.ttft = Histogram("sgc_time_to_first_token_seconds", "Time to first token (streamed requests)",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("sgc_inter_token_latency_seconds", "Time between streamed text deltas",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("sgc_e2e_request_latency_seconds", "Request latency by route", ["route"],
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.program_runs = Counter("sgc_program_runs", "Program instances run, by program and outcome (ok, error, cancelled: the client left)",
                                    ["program", "outcome"], registry=r)
        r.register(_RuntimeCollector(state))
        self._routes = {"/generate", "/v1/completions", "/v1/chat/completions", "/health", "/health_generate",
                        "/metrics", "/flush_cache", "/get_model_info", "/get_server_info", "/v1/models",
                        "/abort_request", "/sgc/score", "/sgc/tokenizer"}

    def observe_http(self, path: str, status: int, seconds: float) -> None:
        route = path if path in self._routes else ("/programs" if path.startswith("/programs/") else "other")
        self.http.labels(route, str(status)).inc()

    def observe_token(self, gap: float, first: bool) -> None:
        (self.ttft if first else self.itl).observe(gap)

    def observe_results(self, route: str, results: list[dict], seconds: float) -> None:
        self.e2e.labels(route or "other").observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
