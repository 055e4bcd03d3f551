"""The benchmark workloads: which program each runs, its synthetic inputs and which ablations apply.

The programs are ordinary sgc programs in `benchmarks/programs/` (also read as examples). They are
loaded by file path, not imported: `benchmarks/` is not an installed package, and a program file is
what `sgc compile` takes too. `programs_dir()` finds them next to the package (a source checkout) or
at `$SGC_BENCH_PROGRAMS`.

Inputs are synthetic text built from a seeded RNG over a fixed word list, so every machine runs the
same workload; sizes depend on `quick` (small enough for a 2-core CPU in minutes) or a full run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ABLATIONS", "SYSTEMS", "WORKLOADS", "Size", "System", "Workload", "applicable", "get_workloads",
           "load_program", "programs_dir"]

# An ablation switches one optimization off; the key names it in results and on the command line.
ABLATIONS: dict[str, str] = {
    "radix": "radix cache (KV reuse across requests)",
    "hoist": "prefix hoisting (hoist-prefix pass)",
    "fuse": "fork fusion (fuse-fork-gens pass)",
    "jump": "jump-forward in constrained decoding",
    "order": "cache-aware ordering (lpm; off = fcfs)",
}

WORDS = ("river stone light paper market garden winter engine signal forest harbor copper silver "
         "valley thunder lantern orchard meadow canyon glacier compass ember willow falcon marble "
         "velvet prism quartz cedar saffron delta summit tide beacon mosaic atlas").split()
NAMES = ("Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra", "Barbara Liskov",
         "Donald Knuth", "Frances Allen", "John Backus", "Margaret Hamilton", "Niklaus Wirth")
CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Quebec", "Tallinn", "Perth", "Accra", "Porto")
JOBS = ("carpenter", "nurse", "pilot", "baker", "librarian", "chemist", "teacher", "architect")


@dataclass(frozen=True)
class Size:
    """How big one run of a workload is: programs, tokens per gen, and programs naive HF times."""

    num_programs: int
    gen_tokens: int
    num_hf_programs: int  # naive HF is slow: it times this many programs and its rate is per program
    scale: int = 1  # workload-specific length knob (shots, words of context, turns)


@dataclass(frozen=True)
class Workload:
    """One benchmark workload: a program, how to make its inputs, and what it exercises."""

    name: str
    title: str
    program_file: str  # in programs_dir()
    function: str
    make_inputs: Callable[[random.Random, Size], list[dict[str, Any]]]
    quick: Size
    full: Size
    ablations: tuple[str, ...]  # keys of ABLATIONS that apply; the others are "n/a"
    bind: tuple[str, ...] = ()  # arguments bound per instance (each instance compiles on its own)
    ignore_eos: bool = False  # fixed-length gens (same token count for every system)
    hf_batched: str | None = None  # "generate" | "score" | "fork": how batched HF runs it, if at all
    tiny: Size = field(default_factory=lambda: Size(2, 4, 1, 1))  # the CI test's size

    def size(self, mode: str) -> Size:
        return {"quick": self.quick, "full": self.full, "tiny": self.tiny}[mode]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _mc_question(rng: random.Random, words: int, answer: bool) -> str:
    options = [_words(rng, rng.randint(2, 5)) for _ in range(4)]
    text = f"Question: {_words(rng, words)}?\n" + "".join(f"{'ABCD'[i]}. {o}\n" for i, o in enumerate(options))
    return text + (f"Answer: {rng.choice('ABCD')}\n\n" if answer else "")


def fewshot_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    """MMLU-like: 5 shots of ~110-word questions (~800 tokens at scale 1), shared by every question."""
    shot_words = max(4, 110 // size.scale)
    prefix = "The following are multiple choice questions about general knowledge.\n\n" + "".join(
        _mc_question(rng, shot_words, True) for _ in range(5))
    return [{"prefix": prefix, "question": _mc_question(rng, 24 // size.scale, False).rstrip("\n")}
            for _ in range(size.num_programs)]


def hellaswag_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    """A shared 3-shot prefix, then per question a context and 4 long endings (~25 words each)."""
    def item(answer: bool) -> tuple[str, list[str]]:
        context = f"A person stands by the {_words(rng, 1)}. They {_words(rng, 40 // size.scale)}"
        endings = [" then " + _words(rng, 25 // size.scale) + "." for _ in range(4)]
        return context, endings

    shots = "".join(c + e[0] + "\n\n" for c, e in (item(True) for _ in range(3)))
    prefix = "Pick the most plausible continuation of each story.\n\n" + shots
    rows = []
    for _ in range(size.num_programs):
        context, endings = item(False)
        rows.append({"prefix": prefix, "context": context, "endings": endings})
    return rows


def essay_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    """Essays of ~400 tokens at scale 1 (sentences of random words)."""
    sentences = max(2, 24 // size.scale)
    return [{"essay": " ".join(_words(rng, rng.randint(8, 16)).capitalize() + "." for _ in range(sentences))}
            for _ in range(size.num_programs)]


def problem_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    return [{"problem": f"How can a town near the {_words(rng, 1)} keep its {_words(rng, 1)} and "
                        f"{_words(rng, 1)} safe? Background: {_words(rng, 120 // size.scale)}."}
            for _ in range(size.num_programs)]


def question_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    return [{"question": f"How should a small team plan a project about the {_words(rng, 3)}?"}
            for _ in range(size.num_programs)]


def person_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    rows = []
    for _ in range(size.num_programs):
        name, city, job = rng.choice(NAMES), rng.choice(CITIES), rng.choice(JOBS)
        rows.append({"document": f"{name} is {rng.randint(21, 80)} years old and works full time as a {job} "
                                 f"in {city}. Outside work they enjoy the {_words(rng, 2)} and write "
                                 f"software in Python. {_words(rng, 30 // size.scale).capitalize()}."})
    return rows


def chat_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    """Conversations of `scale` turns (the chat's length knob), each a short question."""
    return [{"questions": [f"Tell me one fact about the {_words(rng, 2)}." for _ in range(size.scale)]}
            for _ in range(size.num_programs)]


def agent_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    return [{"question": f"Which {_words(rng, 1)} is closest to the {_words(rng, 2)}?"}
            for _ in range(size.num_programs)]


def prompt_inputs(rng: random.Random, size: Size) -> list[dict[str, Any]]:
    return [{"prompt": f"Write a story about {_words(rng, rng.randint(8, 80 // size.scale))}."}
            for _ in range(size.num_programs)]


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("fewshot", "few-shot multiple choice (MMLU-like, 5-shot prefix, 4 choices)",
             "fewshot_select.py", "fewshot_letter", fewshot_inputs,
             quick=Size(8, 1, 1), full=Size(32, 1, 4), ablations=("radix", "order"), hf_batched="score",
             tiny=Size(3, 1, 1, 8)),
    Workload("hellaswag", "HellaSwag-like select (shared context, 4 long endings)",
             "hellaswag_select.py", "hellaswag_select", hellaswag_inputs,
             quick=Size(8, 1, 2), full=Size(24, 1, 3), ablations=("radix", "order"), bind=("endings",),
             hf_batched="score", tiny=Size(2, 1, 1, 8)),
    Workload("fanout", "fork fan-out (an essay, 4 aspect branches)", "fork_fanout.py", "fork_fanout",
             essay_inputs, quick=Size(4, 16, 1), full=Size(8, 24, 2),
             ablations=("radix", "hoist", "fuse"), ignore_eos=True, hf_batched="fork",
             tiny=Size(2, 4, 1, 8)),
    Workload("tree", "tree of thought (3 approaches, each forked into 2 refinements)",
             "tree_of_thought.py", "tree_of_thought", problem_inputs,
             quick=Size(2, 8, 1), full=Size(6, 16, 2), ablations=("radix", "hoist", "fuse"),
             ignore_eos=True, tiny=Size(2, 3, 1, 8)),
    Workload("sot", "skeleton of thought (outline, 3 points in parallel, summary)",
             "skeleton_of_thought.py", "skeleton_of_thought", question_inputs,
             quick=Size(2, 12, 1), full=Size(6, 24, 2), ablations=("radix", "hoist", "fuse"),
             ignore_eos=True, tiny=Size(2, 3, 1)),
    Workload("json", "JSON decoding with a schema (jump-forward)", "json_decode.py", "json_extract",
             person_inputs, quick=Size(4, 96, 1), full=Size(16, 128, 2), ablations=("radix", "jump"),
             tiny=Size(2, 24, 1, 4)),
    Workload("chat", "multi-turn chat (each turn reuses the conversation)", "multi_turn_chat.py",
             "multi_turn_chat", chat_inputs, quick=Size(3, 16, 1, 3), full=Size(12, 24, 2, 3),
             ablations=("radix", "order"), bind=("questions",), ignore_eos=True, tiny=Size(2, 3, 1, 2)),
    Workload("agent", "ReAct agent (select-driven branches, host step)", "react_agent.py", "react_agent",
             agent_inputs, quick=Size(3, 12, 1), full=Size(8, 16, 2), ablations=("radix", "order"),
             tiny=Size(2, 3, 1)),
    Workload("batch", "plain batch generation, nothing shared (the control)", "batch_generate.py",
             "batch_generate", prompt_inputs, quick=Size(16, 24, 2), full=Size(32, 64, 4), ablations=(),
             ignore_eos=True, hf_batched="generate", tiny=Size(3, 4, 1, 8)),
]}


@dataclass(frozen=True)
class System:
    """One column of the comparison: how to run a workload."""

    name: str
    label: str
    kind: str  # "sgc" | "hf-naive" | "hf-batched"
    ablation: str | None = None  # the ABLATIONS key this system switches off
    engine_kwargs: tuple[tuple[str, Any], ...] = ()
    disable_passes: tuple[str, ...] = ()


SYSTEMS: list[System] = [
    System("sgc", "sgc (all optimizations)", "sgc"),
    System("sgc-no-radix", "sgc, radix cache off", "sgc", "radix", (("disable_radix_cache", True),)),
    System("sgc-no-hoist", "sgc, prefix hoisting off", "sgc", "hoist", disable_passes=("hoist-prefix",)),
    System("sgc-no-fuse", "sgc, fork fusion off", "sgc", "fuse", disable_passes=("fuse-fork-gens",)),
    System("sgc-no-jump", "sgc, jump-forward off", "sgc", "jump", (("disable_jump_forward", True),)),
    System("sgc-fcfs", "sgc, cache-aware ordering off (fcfs)", "sgc", "order", (("schedule_policy", "fcfs"),)),
    System("hf-naive", "HF naive (one generate per gen)", "hf-naive"),
    System("hf-batched", "HF batched", "hf-batched"),
]


def applicable(system: System, workload: Workload) -> bool:
    """Whether `system` means anything on `workload` (others are reported as n/a)."""
    if system.ablation is not None:
        return system.ablation in workload.ablations
    if system.kind == "hf-batched":
        return workload.hf_batched is not None
    return True


def get_workloads(names: list[str] | None = None) -> list[Workload]:
    """The workloads named (all, in the table's order, if none); a clear error for an unknown name."""
    if not names:
        return list(WORKLOADS.values())
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {unknown[0]!r} (workloads: {', '.join(WORKLOADS)})")
    return [WORKLOADS[n] for n in names]


def programs_dir() -> Path:
    """`$SGC_BENCH_PROGRAMS`, else `benchmarks/programs/` of the source checkout sgc runs from."""
    env = os.environ.get("SGC_BENCH_PROGRAMS")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "benchmarks" / "programs"
    if not folder.is_dir():
        raise ValueError(f"the benchmark programs are not at {folder}: run sgc bench from a source checkout "
                         "or set $SGC_BENCH_PROGRAMS to the benchmarks/programs folder")
    return folder


def load_program(workload: Workload) -> Any:
    """The workload's `sgc.Function`, imported from its program file."""
    from compiler.parser.tracer import load_program_file

    module = load_program_file(programs_dir() / workload.program_file)
    return getattr(module, workload.function)
