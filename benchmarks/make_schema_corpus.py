"""Build tests/data/schemas/: real JSON schemas from public packages, each with valid and invalid
instances. Run once; its output is committed (CI never regenerates it).

    pip download --no-deps --only-binary=:all: -d WHEELS bfcl-eval==2026.3.23 cfn-lint==1.58.0 \\
        jupyterlab==4.6.6 check-jsonschema==0.39.0 cyclonedx-python-lib==11.12.0 nbformat==5.11.1
    python -m venv /tmp/genv && /tmp/genv/bin/pip install "hypothesis==6.130.*" \
        hypothesis-jsonschema==0.23.1 jsonschema==4.26.0
    /tmp/genv/bin/python benchmarks/make_schema_corpus.py --wheels WHEELS

(hypothesis-jsonschema 0.23.1 breaks on newer hypothesis releases, hence its own environment.)

Sources and licenses are listed in tests/data/schemas/SOURCES.md. Per schema:

* valid instances are drawn with hypothesis-jsonschema from the schema with `additionalProperties:
  false` added to object schemas that list `properties` and say nothing about other ones (sgc, like
  other structured-generation engines, writes listed properties only), then checked with
  `jsonschema` against the *original* schema (its own `$schema` draft, with format checking);
  instances holding a number that needs more than 15 integer digits, 15 fraction digits or a
  3-digit exponent are dropped (sgc's documented number policy, see docs/constraints.md);
* invalid instances are mutations of the valid ones (a required property dropped, a wrong type, a
  number out of range, an extra property, an enum/const violation, a too-long string, an array
  item of the wrong type, ...), kept only when `jsonschema` rejects them;
* schemas for which no valid or no invalid instance comes out are dropped (counted in the log).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis_jsonschema import from_schema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regex_readings import BothReadings  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "schemas"
MAX_SCHEMA_BYTES = 200_000
MAX_VALID = 5
MAX_INVALID = 5
NUMBER_RE = re.compile(r"-?(\d+)(?:\.(\d+))?(?:[eE][+-]?(\d+))?")


# ---------------------------------------------------------------------------------------------
# Sources


def _unzip(wheels: Path, prefix: str, dest: Path) -> Path:
    matches = sorted(wheels.glob(f"{prefix}-*.whl"))
    if not matches:
        raise SystemExit(f"no {prefix} wheel in {wheels}")
    target = dest / prefix
    with zipfile.ZipFile(matches[-1]) as z:
        z.extractall(target)
    return target


def _has_remote_ref(schema: Any) -> bool:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return True
        return any(_has_remote_ref(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_remote_ref(v) for v in schema)
    return False


GORILLA_TYPES = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "integer": "integer",
    "string": "string",
    "boolean": "boolean",
    "array": "array",
    "object": "object",
    "number": "number",
    "null": "null",
}


def _gorilla_to_json_schema(s: Any) -> Any:
    """BFCL's parameter dialect ("dict", "float", "tuple", "any") as JSON Schema, as BFCL itself
    converts it for OpenAI-style tools. Anything else (Java/JS type names) -> ValueError."""
    if isinstance(s, list):
        return [_gorilla_to_json_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {}
    for k, v in s.items():
        if k == "type" and isinstance(v, str):
            if v == "any":
                continue
            if v not in GORILLA_TYPES:
                raise ValueError(v)
            out[k] = GORILLA_TYPES[v]
        elif k == "properties" and isinstance(v, dict):
            out[k] = {name: _gorilla_to_json_schema(p) for name, p in v.items()}
        elif k in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[k] = _gorilla_to_json_schema(v)
        else:
            out[k] = v
    return out


def bfcl(root: Path, rng: random.Random) -> list[tuple[str, Any, str, str]]:
    data = root / "bfcl_eval" / "data"
    plan = [
        ("BFCL_v4_simple_python.json", 40),
        ("BFCL_v4_multiple.json", 25),
        ("BFCL_v4_live_simple.json", 20),
        ("BFCL_v4_live_multiple.json", 45),
        ("multi_turn_func_doc/*.json", 20),
    ]
    seen: set[str] = set()
    out = []
    for pattern, n in plan:
        candidates = []
        for f in sorted(glob.glob(str(data / pattern))):
            for line in open(f, encoding="utf-8"):
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                for fn in d.get("function", [d]) if isinstance(d, dict) else []:
                    if not isinstance(fn, dict) or not isinstance(fn.get("parameters"), dict):
                        continue
                    try:
                        schema = _gorilla_to_json_schema(fn["parameters"])
                    except ValueError:
                        continue
                    key = json.dumps(schema, sort_keys=True)
                    if key in seen or not schema.get("properties"):
                        continue
                    seen.add(key)
                    rel = os.path.relpath(f, root)
                    candidates.append((fn["name"], schema, f"bfcl-eval: {rel} ({fn['name']})"))
        for name, schema, src in rng.sample(candidates, min(n, len(candidates))):
            out.append((f"bfcl-{name}", schema, src, "function-calling"))
    return out


def _bundle_local_files(schema: dict, base: Path, key: str = "$defs") -> dict:
    """Inline refs to sibling files ("spdx.schema.json#/x") under #/<key>/<file>/... ."""
    files: dict[str, Any] = {}

    def rewrite(node: Any, owner: str | None) -> Any:
        if isinstance(node, dict):
            new = {k: rewrite(v, owner) for k, v in node.items()}
            ref = node.get("$ref")
            if isinstance(ref, str):
                path, _, frag = ref.partition("#")
                if path and not re.match(r"^[a-z]+:", path):
                    slot = re.sub(r"[^A-Za-z0-9_.-]", "_", path)
                    if slot not in files:
                        files[slot] = None
                        files[slot] = rewrite(json.loads((base / path).read_text()), slot)
                    new["$ref"] = f"#/{key}/{slot}{frag}"
                elif not path and owner is not None:
                    new["$ref"] = f"#/{key}/{owner}{frag}"
            return new
        if isinstance(node, list):
            return [rewrite(v, owner) for v in node]
        return node

    out = rewrite(schema, None)
    if files:
        defs = dict(out.get(key, {}))
        for slot, sub in files.items():
            if isinstance(sub, dict):
                sub = {k: v for k, v in sub.items() if k not in ("$schema", "$id", "id")}
            defs[slot] = sub
        out[key] = defs
    return out


def collect(wheels: Path, tmp: Path, rng: random.Random) -> list[tuple[str, Any, str, str]]:
    items: list[tuple[str, Any, str, str]] = []
    items += bfcl(_unzip(wheels, "bfcl_eval", tmp), rng)

    cfn = _unzip(wheels, "cfn_lint", tmp)
    res = sorted((cfn / "cfnlint/data/schemas/resources").glob("*.json"))
    picked = []
    for f in rng.sample(res, len(res)):
        if len(picked) >= 110:
            break
        text = f.read_text()
        if len(text) > MAX_SCHEMA_BYTES:
            continue
        schema = json.loads(text)
        if _has_remote_ref(schema):
            continue
        tname = schema.get("typeName", f.stem).replace("::", "-").lower()
        picked.append(
            (f"cfn-{tname}", schema, f"cfn-lint: {f.relative_to(cfn)} ({schema.get('typeName')})", "api")
        )
    items += picked

    lab = _unzip(wheels, "jupyterlab", tmp)
    settings_files = sorted((lab / "jupyterlab/schemas").rglob("*.json"))
    for f in rng.sample(settings_files, min(70, len(settings_files))):
        schema = json.loads(f.read_text())
        rel = f.relative_to(lab / "jupyterlab/schemas")
        name = "jupyterlab-" + str(rel.with_suffix("")).replace("@jupyterlab/", "").replace("/", "-")
        items.append((name, schema, f"jupyterlab: jupyterlab/schemas/{rel}", "config"))

    cj = _unzip(wheels, "check_jsonschema", tmp)
    for f in sorted((cj / "check_jsonschema/builtin_schemas/vendor").glob("*.json")):
        text = f.read_text()
        if len(text) > MAX_SCHEMA_BYTES:
            continue
        schema = json.loads(text)
        if _has_remote_ref(schema):
            continue
        items.append((f"schemastore-{f.stem}", schema, f"check-jsonschema: {f.relative_to(cj)}", "config"))

    cdx = _unzip(wheels, "cyclonedx_python_lib", tmp)
    for f in sorted((cdx / "cyclonedx/schema/_res").glob("bom-*.schema.json")):
        schema = _bundle_local_files(json.loads(f.read_text()), f.parent, "definitions")
        if len(json.dumps(schema)) > MAX_SCHEMA_BYTES or _has_remote_ref(schema):
            continue
        items.append(
            (
                f"cyclonedx-{f.name.split('.SNAPSHOT')[0]}",
                schema,
                f"cyclonedx-python-lib: {f.relative_to(cdx)}",
                "api",
            )
        )

    nbf = _unzip(wheels, "nbformat", tmp)
    for f in sorted((nbf / "nbformat").rglob("*.schema.json")):
        items.append(
            (
                f"nbformat-{f.name.replace('.schema.json', '')}",
                json.loads(f.read_text()),
                f"nbformat: {f.relative_to(nbf)}",
                "config",
            )
        )

    import jsonschema_specifications as specs

    spec_root = Path(specs.__file__).parent / "schemas"
    for draft in ("draft3", "draft4", "draft6", "draft7"):
        f = spec_root / draft / "metaschema.json"
        items.append(
            (
                f"metaschema-{draft}",
                json.loads(f.read_text()),
                f"jsonschema-specifications: schemas/{draft}/metaschema.json",
                "meta",
            )
        )
    return items


# ---------------------------------------------------------------------------------------------
# Instances


class _Timeout(BaseException):
    pass


def _closed(schema: Any, in_allof: bool = False) -> Any:
    """The schema with additionalProperties: false where it lists properties and is silent."""
    if isinstance(schema, list):
        return [_closed(s, in_allof) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in ("enum", "const", "default", "examples", "required"):
            out[k] = v
        elif k in ("properties", "patternProperties", "definitions", "$defs", "dependentSchemas"):
            out[k] = {n: _closed(s) for n, s in v.items()} if isinstance(v, dict) else v
        else:
            out[k] = _closed(v, k == "allOf")
    if (
        isinstance(out.get("properties"), dict)
        and not in_allof
        and not any(
            k in out
            for k in (
                "additionalProperties",
                "unevaluatedProperties",
                "patternProperties",
                "allOf",
                "anyOf",
                "oneOf",
                "$ref",
                "if",
                "dependencies",
                "dependentSchemas",
            )
        )
    ):
        out["additionalProperties"] = False
    return out


def _numbers_ok(x: Any) -> bool:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return True
    if isinstance(x, (int, float)):
        if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
            return False
        m = NUMBER_RE.fullmatch(json.dumps(x))
        return (
            bool(m) and len(m.group(1)) <= 15 and len(m.group(2) or "") <= 15 and len(m.group(3) or "") <= 3
        )
    if isinstance(x, list):
        return all(_numbers_ok(v) for v in x)
    if isinstance(x, dict):
        return all(_numbers_ok(v) for v in x.values())
    return False


def _draw(schema: Any, n: int, seconds: float) -> list[Any]:
    found: list[Any] = []

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(schema))
    def sample(x: Any) -> None:
        found.append(x)

    def alarm(*_: Any) -> None:
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)  # re-fires if a callback swallows it
    try:
        sample()
    except _Timeout:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return found


def _key(x: Any) -> str:
    return json.dumps(x, sort_keys=True)


def _paths(x: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    out = [(path, x)]
    if isinstance(x, dict):
        for k, v in x.items():
            out += _paths(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += _paths(v, path + (i,))
    return out


def _replace(x: Any, path: tuple, fn: Any) -> Any:
    if not path:
        return fn(x)
    y = copy.copy(x)
    y[path[0]] = _replace(x[path[0]], path[1:], fn)
    return y


_DROP = object()


def _mutations(x: Any) -> list[tuple[str, tuple, Any]]:
    """(kind, path, function) candidates; the function returns the new node (or _DROP parent key)."""
    muts: list[tuple[str, tuple, Any]] = []
    for path, v in _paths(x):
        if isinstance(v, dict):
            for k in v:
                muts.append(("drop-property", path, lambda d, k=k: {a: b for a, b in d.items() if a != k}))
            muts.append(("extra-property", path, lambda d: {**d, "zz_extra": 1}))
            muts.append(("wrong-type", path, lambda d: [d]))
            muts.append(("empty-object", path, lambda d: {}))
        elif isinstance(v, list):
            muts.append(("wrong-type", path, lambda a: {"items": a}))
            muts.append(("array-item-type", path, lambda a: a + [{"zz": [None]}]))
            muts.append(("array-too-long", path, lambda a: a + a + a + [a[0] if a else 0] * 50))
            muts.append(("empty-array", path, lambda a: []))
        elif isinstance(v, bool):
            muts.append(("wrong-type", path, lambda b: "true" if b else 0))
        elif isinstance(v, (int, float)):
            muts.append(("wrong-type", path, lambda n: str(n)))
            muts.append(("out-of-range", path, lambda n: n + 10**9))
            muts.append(("out-of-range", path, lambda n: n - 10**9))
            muts.append(("not-integer", path, lambda n: n + 0.5))
            muts.append(("enum-violation", path, lambda n: n + 1))
        elif isinstance(v, str):
            muts.append(("wrong-type", path, lambda s: 12))
            muts.append(("enum-violation", path, lambda s: s + "~x"))
            muts.append(("too-long-string", path, lambda s: s + "x" * 2000))
            muts.append(("too-short-string", path, lambda s: ""))
            muts.append(("format-or-pattern", path, lambda s: "#" + s + " \u00e9"))
        elif v is None:
            muts.append(("wrong-type", path, lambda _: False))
    muts.append(("wrong-type", (), lambda r: None if r is not None else 0))
    return muts


# Hand-written instances for schemas hypothesis-jsonschema cannot draw from (recursive $refs).
_META_VALID = [
    {},
    {"type": "string", "minLength": 1, "maxLength": 8},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]},
    {"type": "array", "items": {"enum": [1, "x", None]}, "maxItems": 3},
    {"anyOf": [{"type": "null"}, {"type": "number", "maximum": 5}]},
]
_META_INVALID = [
    ({"type": 5}, "wrong-type"),
    ({"minLength": -1}, "out-of-range"),
    ({"required": "a"}, "wrong-type"),
    ({"properties": []}, "wrong-type"),
    ({"enum": []}, "too-short-array"),
]
HAND = {f"metaschema-{d}": (_META_VALID, _META_INVALID) for d in ("draft4", "draft6", "draft7")}


def hand_instances(name: str, schema: Any) -> tuple[list, list, list, str]:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    valid = [x for x in HAND[name][0] if validator.is_valid(x)]
    pairs = [(x, k) for x, k in HAND[name][1] if not validator.is_valid(x)]
    return valid, [x for x, _ in pairs], [k for _, k in pairs], "hand-written"


def make_instances(schema: Any, rng: random.Random, seconds: float) -> tuple[list, list, list, str]:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    both = BothReadings(schema)  # a valid instance holds under ECMA's ASCII \w and \d too
    note = ""
    drawn: list[Any] = []
    for candidate in (_closed(schema), schema):
        try:
            drawn = _draw(candidate, 40, seconds)
        except Exception as e:  # hypothesis-jsonschema refuses some schemas
            note = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            continue
        drawn = [x for x in drawn if _numbers_ok(x) and both.is_valid(x)]
        if drawn:
            break
    uniq: dict[str, Any] = {}
    for x in drawn:
        uniq.setdefault(_key(x), x)
    pool = list(uniq.values())
    if not pool:
        return [], [], [], note or "no valid instance drawn"
    pool.sort(key=lambda x: len(_key(x)))
    valid = [pool[-1], pool[0]] if len(pool) > 1 else pool[:1]
    rest = pool[1:-1]
    rng.shuffle(rest)
    valid += rest[: MAX_VALID - len(valid)]

    by_kind: dict[str, list[Any]] = {}
    seen = {_key(v) for v in pool}
    for base in valid:
        muts = _mutations(base)
        rng.shuffle(muts)
        for kind, path, fn in muts[:200]:
            try:
                y = _replace(base, path, fn)
            except Exception:
                continue
            k = _key(y)
            if k in seen or not _numbers_ok(y):
                continue
            seen.add(k)
            if not validator.is_valid(y):
                by_kind.setdefault(kind, []).append(y)
    invalid, kinds = [], []
    while len(invalid) < MAX_INVALID and any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind] and len(invalid) < MAX_INVALID:
                invalid.append(by_kind[kind].pop(0))
                kinds.append(kind)
    return valid, invalid, kinds, note


PACKAGES = {
    # package: (license, what it is, category)
    "bfcl-eval": (
        "Apache-2.0",
        "Berkeley Function Calling Leaderboard data: function parameter schemas "
        "(BFCL's dialect converted: dict->object, float->number, tuple->array, any->no type)",
    ),
    "cfn-lint": ("MIT-0", "AWS CloudFormation resource provider schemas (API payloads) vendored by cfn-lint"),
    "jupyterlab": ("BSD-3-Clause", "JupyterLab extension settings schemas (config)"),
    "check-jsonschema": (
        "Apache-2.0 (the package); each vendored schema keeps its own license, see "
        "check_jsonschema/builtin_schemas/vendor/licenses/ in the wheel: SchemaStore "
        "Apache-2.0, others MIT/Apache-2.0/BSD",
        "SchemaStore and vendor schemas for CI/config files",
    ),
    "cyclonedx-python-lib": (
        "Apache-2.0",
        "CycloneDX SBOM schemas (sibling-file refs to spdx/jsf schemas bundled under #/definitions)",
    ),
    "nbformat": ("BSD-3-Clause", "Jupyter notebook format schemas"),
    "jsonschema-specifications": ("MIT", "JSON Schema draft 3/4/6/7 metaschemas"),
}


def write_sources() -> None:
    docs = [json.loads(f.read_text(encoding="utf-8")) for f in sorted(OUT.glob("*.json"))]
    by_pkg: dict[str, list[dict]] = {}
    for d in docs:
        by_pkg.setdefault(d["source"].split(":")[0], []).append(d)
    lines = [
        "# Sources of the schema corpus",
        "",
        f"{len(docs)} schemas, each in `<name>.json` as `{{name, source, category, schema, valid, invalid, "
        "invalid_mutations}`. The schemas are test data, copied unchanged except where noted; no code "
        "was copied. Instances were generated by `benchmarks/make_schema_corpus.py` (see its docstring "
        "for how); the wheels it read:",
        "",
        "| package (PyPI) | license | what | schemas | name prefix |",
        "| --- | --- | --- | --- | --- |",
    ]
    for pkg, ds in sorted(by_pkg.items()):
        lic, what = PACKAGES.get(pkg, ("?", "?"))
        prefixes = sorted({"`" + d["name"].split("-")[0] + "-`" for d in ds})
        lines.append(f"| {pkg} | {lic} | {what} | {len(ds)} | {', '.join(prefixes)} |")
    lines += [
        "",
        "Versions: bfcl-eval 2026.3.23, cfn-lint 1.58.0, jupyterlab 4.6.6, check-jsonschema 0.39.0, "
        "cyclonedx-python-lib 11.12.0, nbformat 5.11.1, jsonschema-specifications 2025.9.1.",
        "",
        "Valid instances hold under both readings of `pattern` (Python's, which `jsonschema` uses, and ECMA-262's, which JSON Schema specifies: ASCII `\\w`/`\\d`/`\\s`, `.` without CR; `benchmarks/regex_readings.py`). 43 valid instances of 22 `cfn-`/`schemastore-` schemas drawn before that check held under Python's reading only (a Unicode letter or digit for `\\w`/`\\d`, a CR under `.`); those characters were replaced by ASCII ones (2026-12-05).",
        "",
    ]
    for pkg, ds in sorted(by_pkg.items()):
        lines += [f"## {pkg}", ""]
        for d in sorted(ds, key=lambda d: d["name"]):
            lines.append(f"- `{d['name']}`: {d['source'].split(': ', 1)[1]}")
        lines.append("")
    (OUT / "SOURCES.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path)
    ap.add_argument("--seconds", type=float, default=20.0, help="hypothesis time per schema")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--sources-only", action="store_true", help="only rewrite SOURCES.md")
    ap.add_argument("--only", nargs="*", help="only (re)build schemas whose name starts with one of these")
    args = ap.parse_args()
    if args.sources_only:
        write_sources()
        return
    rng = random.Random(13)
    with tempfile.TemporaryDirectory() as tmp:
        items = collect(args.wheels, Path(tmp), rng)
    if args.limit:
        items = items[: args.limit]
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.only:
        for old in OUT.glob("*.json"):
            old.unlink()
    names: set[str] = set()
    dropped: list[tuple[str, str]] = []
    kept = 0
    t_start = time.time()
    for i, (name, schema, source, category) in enumerate(items):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:80]
        base, n = name, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        if args.only and not name.startswith(tuple(args.only)):
            continue
        try:
            jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(
                schema
            )
        except Exception as e:
            dropped.append((name, f"invalid schema: {str(e).splitlines()[0][:100]}"))
            continue
        t0 = time.time()
        if name in HAND:
            valid, invalid, kinds, note = hand_instances(name, schema)
        else:
            valid, invalid, kinds, note = make_instances(schema, random.Random(name), args.seconds)
        if not valid or not invalid:
            dropped.append((name, note or "no invalid instance"))
            print(f"[{i + 1}/{len(items)}] DROP {name}: {note or 'no invalid instance'}", flush=True)
            continue
        doc = {
            "name": name,
            "source": source,
            "category": category,
            "schema": schema,
            "valid": valid,
            "invalid": invalid,
            "invalid_mutations": kinds,
        }
        if note == "hand-written":
            doc["instances"] = "hand-written"
        (OUT / f"{name}.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
        kept += 1
        print(
            f"[{i + 1}/{len(items)}] {name}: {len(valid)} valid, {len(invalid)} invalid "
            f"({time.time() - t0:.1f}s)",
            flush=True,
        )
    write_sources()
    print(f"\n{kept} schemas kept, {len(dropped)} dropped, {time.time() - t_start:.0f}s")
    for name, why in dropped:
        print(f"  dropped {name}: {why}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
