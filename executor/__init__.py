"""sgc's executor, in two layers with one seam (docs/architecture.md has the picture):

- `executor.program`: the program executor (compiled IR graphs, many instances, host steps, results);
- `executor.runtime`: the LLM runtime (engine, scheduler, KV memory, sampling, model runner), with its
  kernels in `executor.kernels`;
- `executor.runtime.runtime_client`: the typed client interface between them, the only runtime module
  the program executor imports.
"""
