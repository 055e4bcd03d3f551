"""The `.sgc` artifact: a compiled program as plain data.

A zip file holding:
  manifest.json     format name and version, sgc version, the source's sha256, the tokenizer
                    fingerprint the constraint tables were compiled for, and a sha256 per member
  ir/<function>.ir  the optimized textual IR of each function (parsed back with the lark reader)
  fsm/<id>.npz      each compiled token FSM as numpy arrays (loaded with allow_pickle=False)
  source.py         the program's source, for error messages and host steps (never executed on load)

Loading never runs code: every member is parsed as data, checked against its checksum, and bounded
by the budgets of `compiler.budgets` (file size, member count, each member's decompressed size
checked before and while decompressing, manifest and IR nesting, IR nodes, the arrays' declared
sizes before they are read); every table is validated (dtype, shape, state and token id ranges)
before use. Any problem is an `ArtifactError` that says what is wrong with which member. Writing goes
to a temporary file that is renamed into place (with the user's umask), so an interrupted write never
leaves a broken file.
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

from compiler import budgets
from compiler.constraints import TokenFSM
from compiler.ir import IRError, Module
from compiler.ir_text import print_graph
from compiler.version import __version__

FORMAT_NAME = "sgc-artifact"
FORMAT_VERSION = 1
_SHA256_HEX = frozenset("0123456789abcdef")
# numpy dtype kinds a constraint table may use: bool, signed and unsigned ints, and raw bytes.
_TABLE_KINDS = frozenset("biuS")


class ArtifactError(Exception):
    """An artifact that cannot be loaded: truncated, tampered, too new, too big, or for another tokenizer."""


@dataclass
class Artifact:
    manifest: dict
    module: Module
    fsms: dict[str, TokenFSM] = field(default_factory=dict)
    source: str | None = None
    fsms_stale: bool = False  # compiled for another tokenizer: recompile before running


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_artifact(
    path: str | Path,
    module: Module,
    fsms: dict[str, TokenFSM],
    *,
    source_text: str = "",
    source_name: str = "",
    tokenizer_fingerprint: str | None = None,
    sgc_version: str = "",
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
        "sgc_version": sgc_version or __version__,
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
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
            for name, data in members.items():
                zf.writestr(name, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        size = path.stat().st_size
    except FileNotFoundError:
        raise ArtifactError(f"{where}: no such artifact") from None
    except OSError as exc:
        raise ArtifactError(f"{where}: cannot read the artifact ({exc})") from None
    budgets.check("artifact_bytes", size, f"{where}: the artifact", ArtifactError)
    try:
        zf = zipfile.ZipFile(path)
    except IsADirectoryError:
        raise ArtifactError(f"{where}: is a directory, not an artifact") from None
    except Exception as exc:  # zipfile raises many types on a damaged central directory
        raise ArtifactError(f"{where}: not a valid sgc artifact (truncated or not a zip file: {exc})") from None
    with zf:
        reader = _MemberReader(zf, where)
        manifest = _parse_manifest(reader.read("manifest.json"), where)
        checked: dict[str, bytes] = {}
        for name, digest in manifest["members"].items():
            data = reader.read(name)
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
    if not stale:
        _check_table_references(module, fsms, where)
    source = checked.get("source.py", b"").decode("utf-8", "replace")
    return Artifact(manifest=manifest, module=module, fsms=fsms, source=source, fsms_stale=stale)


class _MemberReader:
    """Reads members of an open zip within the member and total budgets, never trusting the headers."""

    def __init__(self, zf: zipfile.ZipFile, where: str) -> None:
        self.zf = zf
        self.where = where
        try:
            infos = zf.infolist()
        except Exception as exc:
            raise ArtifactError(f"{where}: the zip directory is damaged ({exc})") from None
        budgets.check("artifact_members", len(infos), f"{where}: the artifact's member count", ArtifactError)
        self.infos = {info.filename: info for info in infos}
        self.total = 0

    def read(self, name: str) -> bytes:
        info = self.infos.get(name)
        if info is None:
            raise ArtifactError(f"{self.where}: member {name} is missing")
        what = f"{self.where}: member {name}"
        limit = budgets.value("artifact_member_bytes")
        budgets.check("artifact_member_bytes", info.file_size, what, ArtifactError)
        budgets.check("artifact_total_bytes", self.total + info.file_size, f"{what} and the members before it",
                      ArtifactError)
        try:
            with self.zf.open(info) as f:
                data = f.read(int(limit) + 1)  # the header's size may lie: never decompress past the budget
        except Exception as exc:  # CRC errors, bad compression data, unsupported methods, ...
            raise ArtifactError(f"{what} is corrupted ({type(exc).__name__}: {exc})") from None
        budgets.check("artifact_member_bytes", len(data), what, ArtifactError)
        self.total += len(data)
        return data


def _parse_manifest(data: bytes, where: str) -> dict:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{where}: manifest.json is not UTF-8 text ({exc})") from None
    depth, line = budgets.nesting_depth(text)
    budgets.check("manifest_depth", depth, f"{where}: manifest.json line {line}", ArtifactError)
    try:
        manifest = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise ArtifactError(f"{where}: manifest.json is not valid JSON ({exc})") from None
    _check_manifest(manifest, where)
    return manifest


def _check_manifest(manifest: object, where: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{where}: not an sgc artifact (manifest format is not {FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{where}: manifest has no valid format_version (a positive integer)")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: written by a newer sgc ({str(manifest.get('sgc_version'))[:40]}, format {version}); "
            f"this sgc reads formats up to {FORMAT_VERSION}: upgrade sgc or recompile"
        )
    members = manifest.get("members")
    if not isinstance(members, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 and set(v) <= _SHA256_HEX
        for k, v in members.items()
    ):
        raise ArtifactError(f"{where}: manifest has no valid member checksums (a sha256 hex digest per member)")
    for key in ("functions", "fsms"):
        names = manifest.get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ArtifactError(f"{where}: manifest field {key!r} is missing or not a list of names")
        if len(set(names)) != len(names):
            raise ArtifactError(f"{where}: manifest field {key!r} names something twice")
    if not manifest["functions"]:
        raise ArtifactError(f"{where}: the manifest lists no functions")
    for key in ("tokenizer_fingerprint", "source_name", "sgc_version"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise ArtifactError(f"{where}: manifest field {key!r} is not a string")


def _load_module(manifest: dict, members: dict[str, bytes], where: str) -> Module:
    from compiler.parser.ir_reader import IRParseError, parse_module

    texts = []
    for name in manifest["functions"]:
        member = f"ir/{name}.ir"
        if member not in members:
            raise ArtifactError(f"{where}: function {name} has no checked member {member}")
        try:
            texts.append(members[member].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"{where}: member {member} is not UTF-8 text ({exc})") from None
    try:
        module = parse_module("\n".join(texts))
    except (IRParseError, IRError) as exc:
        raise ArtifactError(f"{where}: the IR does not load: {exc}") from None
    if [g.name for g in module] != list(manifest["functions"]):
        raise ArtifactError(f"{where}: the IR defines functions {[g.name for g in module]}, "
                            f"but the manifest lists {manifest['functions']}")
    return module


def _load_fsms(manifest: dict, members: dict[str, bytes], where: str) -> dict[str, TokenFSM]:
    fsms = {}
    for ident in manifest["fsms"]:
        member = f"fsm/{ident}.npz"
        if member not in members:
            raise ArtifactError(f"{where}: constraint table {ident} has no checked member {member}")
        arrays = _read_npz(members[member], f"{where}: constraint table {ident}")
        try:
            fsms[ident] = TokenFSM.from_arrays(arrays)
        except Exception as exc:  # any malformed table is the artifact's fault, reported as such
            raise ArtifactError(f"{where}: constraint table {ident} is malformed ({exc})") from None
    return fsms


def _check_table_references(module: Module, fsms: dict[str, TokenFSM], where: str) -> None:
    """Every constrained gen must find the table it names (a dropped table is tampering, not a cache miss)."""
    for graph in module:
        for node in graph.nodes():
            ident = getattr(node.op, "fsm", None)
            if ident is not None and ident not in fsms:
                raise ArtifactError(f"{where}: @{graph.name}: %{node.id} ({node.op.opname}) names constraint table "
                                    f"{ident}, which the artifact does not hold")


def _read_npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz, each header checked (dtype, declared size) before its data is read."""
    arrays: dict[str, np.ndarray] = {}
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as npz:
            infos = npz.infolist()
            budgets.check("artifact_members", len(infos), f"{what}: its array count", ArtifactError)
            for info in infos:
                name = info.filename.removesuffix(".npy")
                budgets.check("artifact_member_bytes", info.file_size, f"{what}: array {name}", ArtifactError)
                with npz.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0), (3, 0)):
                        raise ArtifactError(f"{what}: array {name} has an unknown .npy version {version}")
                    header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                    shape, fortran, dtype = header(f, max_header_size=10_000) if version[0] > 1 else header(f)
                    if dtype.kind not in _TABLE_KINDS or dtype.hasobject:
                        raise ArtifactError(f"{what}: array {name} has dtype {dtype}, which a table never uses")
                    total += int(np.prod(shape, dtype=object)) * dtype.itemsize
                    budgets.check("artifact_member_bytes", total, f"{what}: its arrays", ArtifactError)
                    count = int(np.prod(shape, dtype=object))
                    raw = f.read(count * dtype.itemsize + 1)
                    if len(raw) != count * dtype.itemsize:
                        raise ArtifactError(f"{what}: array {name} holds {len(raw)} bytes, not the "
                                            f"{count * dtype.itemsize} its header declares")
                    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                    arrays[name] = array.copy()
    except ArtifactError:
        raise
    except Exception as exc:  # a damaged inner zip or .npy header
        raise ArtifactError(f"{what} is malformed ({type(exc).__name__}: {exc})") from None
    return arrays
