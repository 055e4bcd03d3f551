"""The LLM runtime: engine, scheduler, KV memory and radix cache, sampling, constraints, model runner.

It runs requests (token ids in, tokens out) and knows nothing of programs. What a client may use is
`executor.runtime.runtime_client`, the one seam (plain data, no torch); `executor.runtime.engine.Engine`
is the in-process implementation. The kernels are in `executor/kernels/`. This package imports
nothing on its own, so importing the client interface does not load the runtime.
"""
