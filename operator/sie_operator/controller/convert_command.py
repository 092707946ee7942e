"""``sie-operator convert``: SIE model YAML files to ModelConfig manifests, and back.

Why: moving an existing SIE catalog into git as ModelConfig resources (and checking what
a resource means to SIE) must be mechanical and lossless; this is the same mapping the
operator applies (``spec.sie_to_spec``/``spec.spec_to_sie``). Every input is converted and
checked before anything is written, so a bad file leaves no partial output.

    sie-operator convert models/ -n sie > modelconfigs.yaml      # SIE -> manifests
    kubectl get mcfg -o yaml | sie-operator convert --to sie -     # manifests -> SIE
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..catalog import yamlio
from ..catalog.ids import id_to_filename
from ..cli import UsageError
from .spec import KIND, SpecError, dump_yaml, dump_yaml_all, from_manifest, is_manifest, to_manifest

_SUFFIXES = (".yaml", ".yml")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="files, directories (their *.yaml/*.yml) or - for stdin",
    )
    parser.add_argument(
        "--to",
        choices=["modelconfig", "sie"],
        default="modelconfig",
        help="modelconfig: SIE model YAML -> manifests (default); sie: manifests -> SIE model YAML",
    )
    parser.add_argument("-n", "--namespace", help="metadata.namespace of the manifests (--to modelconfig)")
    parser.add_argument(
        "-o",
        "--output-dir",
        metavar="OUT_DIR",
        help="write one file per model here instead of a multi-document stream on stdout",
    )


def _inputs(paths: list[str]) -> Iterator[tuple[str, str]]:
    """(label, text) of every input file, directories expanded in name order."""
    for raw in paths:
        if raw == "-":
            yield "<stdin>", sys.stdin.read()
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
            if not files:
                raise UsageError(f"{raw}: no *.yaml or *.yml files in this directory")
        elif path.exists():
            files = [path]
        else:
            raise UsageError(f"{raw}: no such file or directory")
        for f in files:
            try:
                yield str(f), f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"{f}: cannot read: {exc}") from exc


def _load_all(label: str, text: str) -> list[Any]:
    """All YAML documents of a file, with the SIE loader's rules (true/false only, no duplicates)."""
    try:
        # yamlio's loader: YAML 1.2 booleans and duplicate keys refused, as for SIE files.
        return [d for d in yaml.load_all(text, Loader=yamlio._Loader) if d is not None]
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise UsageError(f"{label}: invalid YAML: {' '.join(str(exc).split())}") from exc


def _to_modelconfig(label: str, text: str, namespace: str | None) -> list[dict[str, Any]]:
    docs = _load_all(label, text)
    if not docs:
        raise UsageError(f"{label}: no YAML documents")
    out = []
    for i, doc in enumerate(docs, 1):
        where = label if len(docs) == 1 else f"{label} (document {i})"
        if is_manifest(doc) or (isinstance(doc, dict) and doc.get("kind") in ("List", f"{KIND}List")):
            raise UsageError(f"{where}: already a {KIND} manifest (use --to sie to convert it back)")
        if not isinstance(doc, dict):
            raise UsageError(
                f"{where}: not an SIE model config (expected a mapping with sie_id and profiles)"
            )
        try:
            out.append(to_manifest(doc, namespace=namespace))
        except SpecError as exc:
            raise UsageError(f"{where}: {exc}") from exc
    return out


def _to_sie(label: str, text: str) -> list[dict[str, Any]]:
    out = []
    docs = _load_all(label, text)
    if not docs:
        raise UsageError(f"{label}: no YAML documents")
    for i, doc in enumerate(docs, 1):
        items = (
            doc.get("items")
            if isinstance(doc, dict) and doc.get("kind") in ("List", f"{KIND}List")
            else [doc]
        )
        for obj in items if isinstance(items, list) else []:
            where = label if len(docs) == 1 else f"{label} (document {i})"
            if not is_manifest(obj):
                if isinstance(obj, dict) and "kind" not in obj and "profiles" in obj:
                    raise UsageError(f"{where}: an SIE model config, not a {KIND} (use --to modelconfig)")
                kind = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
                raise UsageError(f"{where}: not a {KIND} manifest (kind {kind!r})")
            try:
                out.append(from_manifest(obj))
            except SpecError as exc:
                name = (obj.get("metadata") or {}).get("name", "?")
                raise UsageError(f"{where}: {KIND} {name}: {exc}") from exc
    return out


def _write(out_dir: str, files: dict[str, Any]) -> None:
    target = Path(out_dir)
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, doc in files.items():
            (target / name).write_text(dump_yaml(doc), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot write: {exc}") from exc
    print(f"wrote {len(files)} file(s) to {target}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.namespace and args.to == "sie":
        raise UsageError("--namespace applies to --to modelconfig only")
    if args.namespace and not (len(args.namespace) <= 63 and _DNS_LABEL.fullmatch(args.namespace)):
        raise UsageError(f"--namespace {args.namespace!r} is not a valid namespace name (DNS-1123 label)")

    docs: list[dict[str, Any]] = []
    files: dict[str, Any] = {}  # output file name -> document
    origin: dict[str, str] = {}  # output file name -> input label, to name both sides of a clash
    for label, text in _inputs(args.paths):
        if args.to == "modelconfig":
            converted = _to_modelconfig(label, text, args.namespace)
        else:
            converted = _to_sie(label, text)
        for doc in converted:
            if args.to == "modelconfig":
                key, what = doc["metadata"]["name"], "metadata.name"
                fname = f"{key}.yaml"
            else:
                key, what = str(doc.get("sie_id") or doc.get("name")), "model id"
                fname = f"{id_to_filename(key)}.yaml"
            if fname in files:
                raise UsageError(
                    f"{label}: {what} {key!r} is also produced by {origin[fname]}; "
                    "two models cannot share it (rename one)"
                )
            files[fname], origin[fname] = doc, label
            docs.append(doc)

    if args.output_dir:
        _write(args.output_dir, files)
    else:
        sys.stdout.write(dump_yaml_all(docs))
    if args.to == "modelconfig" and any(_has_null(d["spec"]) for d in docs):
        print(NULLS_NOTE, file=sys.stderr)
    return 0


NULLS_NOTE = (
    "sie-operator convert: note: the manifests keep explicit nulls of the SIE files; client-side "
    "`kubectl apply` drops them, `kubectl apply --server-side` and `kubectl create` keep them"
)


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return False
