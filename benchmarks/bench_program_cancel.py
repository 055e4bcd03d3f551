"""How fast a cancelled compiled program run ends (issue 15's leftover: `Cancellation`).

    .venv/bin/python benchmarks/bench_program_cancel.py [MODEL]        # default: smollm2-135m-instruct

Runs tests/test_program_cancel.py's `long_story` (6 sequential gens of 70 tokens, ignore_eos) once
uncancelled, then 5 times cancelled at 30% of that time from another thread, timing cancel() ->
the run returned, and checking after each that the engine has no request left and its KV is intact.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sgc  # noqa: E402
from executor.program.graph_llm import make_run_defaults  # noqa: E402
from executor.program.graph_run import Cancellation  # noqa: E402
from models import resolve_model  # noqa: E402
from tests.test_program_cancel import long_story  # noqa: E402

GREEDY = make_run_defaults(temperature=0)


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else str(resolve_model("smollm2-135m-instruct"))
    with sgc.Runtime(model, device="cpu") as rt:
        story = rt.compile(long_story)
        story.run("long_story", {"topic": "warmup"}, GREEDY)
        started = time.perf_counter()
        story.run("long_story", {"topic": "the sea"}, GREEDY)
        full = time.perf_counter() - started
        latencies = []
        for i in range(5):
            cancel, done = Cancellation(), threading.Event()

            def go(topic: str = f"the sea {i}", cancel: Cancellation = cancel, done: threading.Event = done) -> None:
                try:
                    story.run("long_story", {"topic": topic}, GREEDY, cancel=cancel)
                except Exception:  # the cancelled error
                    pass
                done.set()

            threading.Thread(target=go, daemon=True).start()
            time.sleep(full * 0.3)
            started = time.perf_counter()
            cancel.cancel()
            assert done.wait(30), "the cancelled run did not end"
            latencies.append(time.perf_counter() - started)
            engine = rt.engine
            assert not engine.scheduler.all_requests()
            engine.kv_manager.check_integrity(engine.scheduler.all_requests())
        median = statistics.median(latencies)
        print(f"full uncancelled run {full:.2f} s; cancel -> run returned: median {median * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} (median = {median / full:.4f} of a full "
              "run); after each: no request left in the engine, KV integrity held")


if __name__ == "__main__":
    main()
