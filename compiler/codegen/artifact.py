"""The `.sgc` artifact: a compiled program as plain data.

A zip file holding:
  manifest.json     format name and version, sgc version, the source's sha256, the tokenizer
                    fingerprint the constraint tables were compiled for, and a sha256 per member
  ir/<function>.ir  the optimized textual IR of each function (parsed back with the lark reader)
  fsm/<id>.npz      each compiled token FSM as numpy arrays (loaded with allow_pickle=False)
  source.py         the program's source, for error messages and host steps (never executed on load)

Loading never runs code: every member is parsed as data, checked against its checksum and size
limits, and any problem is an `ArtifactError` that says what is wrong with which member. Writing goes
to a temporary file that is renamed into place, so an interrupted write never leaves a broken file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from compiler.constraints import TokenFSM
from compiler.ir import IRError, Module
from compiler.ir_text import print_graph

FORMAT_NAME = "sgc-artifact"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 512 << 20  # a bound against zip bombs; real tables are a few MB
MAX_MEMBERS = 100_000


class ArtifactError(Exception):
    """An artifact that cannot be loaded: truncated, tampered, too new, or for another tokenizer."""


@dataclass
class Artifact:
    manifest: dict
    module: Module
    fsms: dict[str, TokenFSM] = field(default_factory=dict)
    source: str | None = None
    fsms_stale: bool = False  # compiled for another tokenizer: recompile before running


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sgc_version() -> str:
    from sgc import __version__

    return __version__


def write_artifact(
    path: str | Path,
    module: Module,
    fsms: dict[str, TokenFSM],
    *,
    source_text: str = "",
    source_name: str = "",
    tokenizer_fingerprint: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the program to `path` atomically; returns the path."""
    path = Path(path)
    members: dict[str, bytes] = {}
    for graph in module:
        members[f"ir/{graph.name}.ir"] = print_graph(graph).encode("utf-8")
    for ident, fsm in sorted(fsms.items()):
        buf = io.BytesIO()
        np.savez(buf, **fsm.to_arrays())
        members[f"fsm/{ident}.npz"] = buf.getvalue()
    members["source.py"] = source_text.encode("utf-8")
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sgc_version": _sgc_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_name": source_name,
        "source_sha256": _sha256(members["source.py"]),
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "functions": [g.name for g in module],
        "fsms": sorted(fsms),
        "members": {name: _sha256(data) for name, data in members.items()},
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
            for name, data in members.items():
                zf.writestr(name, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_artifact(
    path: str | Path,
    *,
    tokenizer_fingerprint: str | None = None,
    on_tokenizer_mismatch: str = "recompile",
) -> Artifact:
    """Load an artifact as data. With `tokenizer_fingerprint`, constraint tables compiled for another
    tokenizer are dropped and flagged (`fsms_stale`) when `on_tokenizer_mismatch="recompile"`, or
    refused with an `ArtifactError` when it is "error"."""
    if on_tokenizer_mismatch not in ("recompile", "error"):
        raise ValueError("on_tokenizer_mismatch must be 'recompile' or 'error'")
    path = Path(path)
    where = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ArtifactError(f"{where}: no such artifact") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"{where}: not a valid sgc artifact (truncated or not a zip file: {exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArtifactError(f"{where}: {len(infos)} members is more than an artifact can have")
        sizes = {i.filename: i.file_size for i in infos}

        def read(name: str) -> bytes:
            if name not in sizes:
                raise ArtifactError(f"{where}: member {name} is missing")
            if sizes[name] > MAX_MEMBER_BYTES:
                raise ArtifactError(f"{where}: member {name} is {sizes[name]} bytes, over the limit")
            try:
                return zf.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise ArtifactError(f"{where}: member {name} is corrupted ({exc})") from None

        try:
            manifest = json.loads(read("manifest.json"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{where}: manifest.json is not valid JSON ({exc})") from None
        _check_manifest(manifest, where)
        checked: dict[str, bytes] = {}
        for name, digest in manifest["members"].items():
            data = read(name)
            if _sha256(data) != digest:
                raise ArtifactError(f"{where}: member {name} does not match its checksum (tampered or corrupted)")
            checked[name] = data

    module = _load_module(manifest, checked, where)
    stale = (tokenizer_fingerprint is not None and manifest.get("tokenizer_fingerprint") is not None
             and manifest["tokenizer_fingerprint"] != tokenizer_fingerprint)
    if stale and on_tokenizer_mismatch == "error":
        raise ArtifactError(
            f"{where}: its constraint tables were compiled for tokenizer {manifest['tokenizer_fingerprint'][:12]}, "
            f"but this model's tokenizer is {tokenizer_fingerprint[:12]}; recompile the program for this model"
        )
    fsms = {} if stale else _load_fsms(manifest, checked, where)
    return Artifact(manifest=manifest, module=module, fsms=fsms,
                    source=checked.get("source.py", b"").decode("utf-8", "replace"), fsms_stale=stale)


def _check_manifest(manifest: object, where: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{where}: not an sgc artifact (manifest format is not {FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{where}: manifest has no integer format_version")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: written by a newer sgc ({manifest.get('sgc_version')}, format {version}); "
            f"this sgc reads formats up to {FORMAT_VERSION}: upgrade sgc or recompile"
        )
    members = manifest.get("members")
    if not isinstance(members, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in members.items()):
        raise ArtifactError(f"{where}: manifest has no valid member checksums")
    for key in ("functions", "fsms"):
        if not isinstance(manifest.get(key), list):
            raise ArtifactError(f"{where}: manifest field {key!r} is missing or not a list")


def _load_module(manifest: dict, members: dict[str, bytes], where: str) -> Module:
    from compiler.parser.ir_reader import IRParseError, parse_module

    texts = []
    for name in manifest["functions"]:
        member = f"ir/{name}.ir"
        if member not in members:
            raise ArtifactError(f"{where}: function {name} has no checked member {member}")
        texts.append(members[member].decode("utf-8"))
    try:
        return parse_module("\n".join(texts))
    except (IRParseError, IRError) as exc:
        raise ArtifactError(f"{where}: the IR does not load: {exc}") from None


def _load_fsms(manifest: dict, members: dict[str, bytes], where: str) -> dict[str, TokenFSM]:
    fsms = {}
    for ident in manifest["fsms"]:
        member = f"fsm/{ident}.npz"
        if member not in members:
            raise ArtifactError(f"{where}: constraint table {ident} has no checked member {member}")
        try:
            with np.load(io.BytesIO(members[member]), allow_pickle=False) as arrays:
                fsms[ident] = TokenFSM.from_arrays(dict(arrays))
        except Exception as exc:  # any malformed table is the artifact's fault, reported as such
            raise ArtifactError(f"{where}: constraint table {ident} is malformed ({exc})") from None
    return fsms
