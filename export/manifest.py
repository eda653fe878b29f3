"""``manifest.json``: the versioned contract between an export and whoever serves it.

Everything a server needs to use a model lives here — family, task, input layout and shape
constraints, the preprocessing description, labels and the meaning of each output, and what
was verified at export (source checksum, exporter versions, parity figures). :func:`read_manifest`
validates the schema and the files' checksums, so a hand-edited or swapped file is refused with a
message naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imaging.atomic import atomic_write_bytes
from imaging.outputs import ACTIVATIONS, MEANINGS, OutputSpec
from imaging.preprocess import Preprocessing

#: 2: ``serves`` (the serving roles an export fills) is recorded; a family is any registered one
SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
TASKS = ("segment", "restore", "classify", "embed", "correspond")
PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("onnx", "tensorrt")


class ManifestError(ValueError):
    """A manifest (or a file it lists) is missing, malformed or does not match."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class TensorSpec:
    """One graph input: name, dtype, layout, symbolic shape (str = dynamic axis) and the
    divisibility each axis must satisfy."""

    name: str
    dtype: str
    layout: str
    shape: list
    multiple_of: list[int]
    max_batch: int


@dataclass
class ModelFile:
    """A file of the export: its format, precision, size and checksum."""

    path: str
    format: str
    precision: str
    sha256: str
    bytes: int


@dataclass
class ParityRecord:
    """Worst-case agreement of a runtime with PyTorch (or ORT, for TensorRT) at export."""

    runtime: str
    precision: str
    batch: int
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    passed: bool
    inputs: str = "random"


@dataclass
class Manifest:
    """The parsed ``manifest.json`` (see the module docstring)."""

    name: str
    family: str
    task: str
    model_name: str
    model_args: dict
    inputs: list[TensorSpec]
    outputs: list[OutputSpec]
    preprocessing: Preprocessing
    files: list[ModelFile]
    source: dict
    exporter: dict
    parity: list[ParityRecord]
    #: serving role → rank (lower is preferred) of the roles this export can fill, from its
    #: family descriptor at export (:meth:`models.family.Family.serves`); the server reads
    #: only this, so it needs no knowledge of model families
    serves: dict[str, int] = field(default_factory=dict)
    inference: dict = field(default_factory=dict)
    quantization: dict | None = None
    config: dict | None = None
    #: radiographs: the unit-image features of the inputs the model was trained on
    #: (:func:`imaging.distribution.phantom_statistics`), for the server's input guard; None:
    #: not recorded (older exports), and the guard skips that check
    input_statistics: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def file(self, fmt: str, precision: str | None = None) -> ModelFile | None:
        """The first file of ``fmt`` (and ``precision``, if given), or None."""
        for f in self.files:
            if f.format == fmt and (precision is None or f.precision == precision):
                return f
        return None

    @property
    def labels(self) -> dict[str, list[str]]:
        """Label names per probability output."""
        return {o.name: list(o.labels) for o in self.outputs if o.labels}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        order = ["schema_version", "name", "family", "task", "model_name"]
        return {k: d[k] for k in order} | {k: v for k, v in d.items() if k not in order}


# --------------------------------------------------------------------------- validation

_SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list}


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check(d: Any, where: str, spec: dict[str, tuple[str, bool]], known_extra=()) -> None:
    """Raise :class:`ManifestError` unless ``d`` is a dict holding ``spec``'s fields.

    ``spec`` maps a field to ``(type name, required)``; a type ending in ``?`` may be null.
    """
    if not isinstance(d, dict):
        raise ManifestError(f"{where} must be an object, got {_type_name(d)}")
    for key, (tname, required) in spec.items():
        if key not in d:
            if required:
                raise ManifestError(f"missing field {where}.{key}".replace("$.", ""))
            continue
        value = d[key]
        nullable = tname.endswith("?")
        base = tname.rstrip("?")
        if value is None and nullable:
            continue
        ok = isinstance(value, _SCALARS[base])
        if base in ("int", "float") and isinstance(value, bool):
            ok = False
        if not ok:
            raise ManifestError(
                f"field {where}.{key} must be {base}, got {_type_name(value)}".replace("$.", "")
            )
    unknown = set(d) - set(spec) - set(known_extra)
    if unknown:
        raise ManifestError(f"unknown field(s) in {where}: {', '.join(sorted(unknown))}")


def _choice(value: str, valid: tuple[str, ...], where: str) -> None:
    if value not in valid:
        raise ManifestError(f"field {where} must be one of {', '.join(valid)}, got {value!r}")


_TOP = {
    "schema_version": ("int", True),
    "name": ("str", True),
    "family": ("str", True),
    "task": ("str", True),
    "model_name": ("str", True),
    "model_args": ("dict", True),
    "inputs": ("list", True),
    "outputs": ("list", True),
    "preprocessing": ("dict", True),
    "files": ("list", True),
    "source": ("dict", True),
    "exporter": ("dict", True),
    "parity": ("list", True),
    "serves": ("dict", True),
    "inference": ("dict", False),
    "quantization": ("dict?", False),
    "config": ("dict?", False),
    "input_statistics": ("dict?", False),
}
_INPUT = {
    "name": ("str", True),
    "dtype": ("str", True),
    "layout": ("str", True),
    "shape": ("list", True),
    "multiple_of": ("list", True),
    "max_batch": ("int", True),
}
_OUTPUT = {
    "name": ("str", True),
    "meaning": ("str", True),
    "activation": ("str", True),
    "shape": ("list", True),
    "labels": ("list?", False),
    "head": ("str?", False),
}
_FILE = {
    "path": ("str", True),
    "format": ("str", True),
    "precision": ("str", True),
    "sha256": ("str", True),
    "bytes": ("int", True),
}
_PARITY = {
    "runtime": ("str", True),
    "precision": ("str", True),
    "batch": ("int", True),
    "max_abs": ("float", True),
    "max_rel": ("float", True),
    "rtol": ("float", True),
    "atol": ("float", True),
    "passed": ("bool", True),
    "inputs": ("str", False),
}
_SOURCE = {"sha256": ("str", True), "kind": ("str", True)}
_EXPORTER = {"opset": ("int", True), "anatomix": ("str", True), "torch": ("str", True)}


def _dims(shape: list, where: str) -> None:
    for i, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, (int, str)):
            raise ManifestError(f"field {where}[{i}] must be int or str, got {_type_name(dim)}")


def _input_statistics(d: dict) -> None:
    features = d.get("features")
    if not isinstance(features, dict):
        raise ManifestError("field input_statistics.features must be an object")
    for name, stats in features.items():
        _check(stats, f"input_statistics.features.{name}",
               {"mean": ("float", True), "std": ("float", True)})  # fmt: skip


def manifest_from_dict(d: Any) -> Manifest:
    """Validate a decoded ``manifest.json`` and build a :class:`Manifest`.

    Raises:
        ManifestError: naming the first offending field.
    """
    if isinstance(d, dict) and d.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        # before the fields: an older manifest lacks some, and re-exporting is the fix
        raise ManifestError(
            f"schema_version {d['schema_version']} is not supported (this anatomix reads "
            f"{SCHEMA_VERSION}); re-export the model"
        )
    _check(d, "$", _TOP)
    if not d["family"].isidentifier():
        raise ManifestError(f"field family must be a family name, got {d['family']!r}")
    _choice(d["task"], TASKS, "task")
    for role, rank in d["serves"].items():
        if not role.isidentifier() or isinstance(rank, bool) or not isinstance(rank, int):
            raise ManifestError(f"field serves.{role} must map a role name to an integer rank")
    if not d["inputs"] or not d["outputs"] or not d["files"]:
        raise ManifestError("inputs, outputs and files must each list at least one entry")
    inputs, outputs, files, parity = [], [], [], []
    for i, item in enumerate(d["inputs"]):
        _check(item, f"inputs[{i}]", _INPUT)
        _dims(item["shape"], f"inputs[{i}].shape")
        if len(item["multiple_of"]) != len(item["shape"]):
            raise ManifestError(f"field inputs[{i}].multiple_of must have one entry per axis")
        inputs.append(TensorSpec(**item))
    for i, item in enumerate(d["outputs"]):
        _check(item, f"outputs[{i}]", _OUTPUT)
        _dims(item["shape"], f"outputs[{i}].shape")
        _choice(item["meaning"], MEANINGS, f"outputs[{i}].meaning")
        _choice(item["activation"], ACTIVATIONS, f"outputs[{i}].activation")
        outputs.append(OutputSpec(**item))
    for i, item in enumerate(d["files"]):
        _check(item, f"files[{i}]", _FILE)
        _choice(item["format"], FORMATS, f"files[{i}].format")
        _choice(item["precision"], PRECISIONS, f"files[{i}].precision")
        if Path(item["path"]).name != item["path"]:
            raise ManifestError(f"field files[{i}].path must be a bare file name")
        files.append(ModelFile(**item))
    for i, item in enumerate(d["parity"]):
        _check(item, f"parity[{i}]", _PARITY)
        parity.append(ParityRecord(**item))
    _check(d["source"], "source", _SOURCE, known_extra=d["source"].keys())
    _check(d["exporter"], "exporter", _EXPORTER, known_extra=d["exporter"].keys())
    try:
        pre = Preprocessing.from_dict(d["preprocessing"])
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"field preprocessing: {exc}") from None
    if d.get("input_statistics") is not None:
        _input_statistics(d["input_statistics"])
    rest = {k: d[k] for k in ("inference", "quantization", "config", "input_statistics") if k in d}
    return Manifest(
        name=d["name"],
        family=d["family"],
        task=d["task"],
        model_name=d["model_name"],
        model_args=d["model_args"],
        inputs=inputs,
        outputs=outputs,
        preprocessing=pre,
        files=files,
        source=d["source"],
        exporter=d["exporter"],
        parity=parity,
        serves=dict(d["serves"]),
        schema_version=d["schema_version"],
        **rest,
    )


def write_manifest(manifest: Manifest, export_dir: str | os.PathLike) -> Path:
    """Validate and write ``export_dir/manifest.json`` atomically."""
    d = manifest.to_dict()
    manifest_from_dict(json.loads(json.dumps(d)))  # never write what we would refuse to read
    path = Path(export_dir) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(d, indent=2) + "\n").encode())
    return path


def read_manifest(export_dir: str | os.PathLike, *, verify_files: bool = True) -> Manifest:
    """Read and validate ``manifest.json`` of an export directory (or the file itself).

    Args:
        export_dir: the export directory, or the path of its ``manifest.json``.
        verify_files: check that every listed model file exists with its recorded SHA-256.

    Raises:
        ManifestError: the message names the file and what is wrong.
    """
    path = Path(export_dir)
    path = path / MANIFEST_NAME if path.is_dir() else path
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (is this an export directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    try:
        manifest = manifest_from_dict(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if verify_files:
        for f in manifest.files:
            file = path.parent / f.path
            if not file.is_file():
                raise ManifestError(f"{file}: listed in {path.name} but missing")
            if file.stat().st_size != f.bytes or sha256_file(file) != f.sha256:
                raise ManifestError(
                    f"{file}: checksum does not match {path.name} (truncated, modified or "
                    "swapped); re-export the model"
                )
    return manifest
