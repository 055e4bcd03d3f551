"""The program executor: runs compiled programs (IR graphs) through the IR interpreter, many instances
at once, sending their model requests to an LLM runtime.

It reaches the runtime only through `executor.runtime.runtime_client` (`tests/test_import_graph.py`
checks it), so the in-process engine, an HTTP client or remote replicas are all the same to it.
Start at `graph_executor.py` (`GraphExecutor`) and `graph_run.py` (the dataflow loop).
"""
