"""Capture files: capture where the model runs, explore anywhere.

``cap.save("run.safetensors")`` writes what a capture holds — per layer ``q``, ``k`` (after
rotary embeddings), ``lse`` and the attention options (mask, bias and sinks as tensors), the
tokens, the model's name and description — into one safetensors file, O(layers · heads · N · d)
bytes, never N². ``attnkit.load_capture(path)`` reads it back as a ``CaptureFile``, a
``Captured`` with the same reading API as a live capture, without transformers or the model.

The file's metadata says ``attnkit.format = "attnkit-capture"`` and a format version; every
tensor carries a CRC-32 there too, so a damaged file is refused instead of drawn wrong.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from attnkit.errors import AttnkitError, CaptureFileError
from attnkit.inspect.captured import Captured, Record
from attnkit.inspect.families import ModelInfo
from attnkit.inspect.rotary import Rotary
from attnkit.runtime import check_writable, written_together

__all__ = ["FORMAT", "FORMAT_VERSION", "CaptureFile", "save_capture", "load_capture"]

FORMAT = "attnkit-capture"
FORMAT_VERSION = 1
"""The version this attnkit writes and the newest it reads. Raise it when a reader of the old
version would misread the new layout."""

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CaptureFile(Captured):
    """A capture read from a file by ``attnkit.load_capture``: ``layers``, ``heads``, ``tokens``,
    ``pattern``, ``patterns``, ``scores``, ``why``... as a live capture, plus ``path``,
    ``model_info`` (``ModelInfo`` or None), ``rotary``, ``input_ids`` (``(B, S)`` or None),
    ``format_version`` and ``attnkit_version`` (of the writer)."""

    def __init__(self, path: Path, name: str):
        super().__init__(name)
        self.path = path
        self.input_ids: torch.Tensor | None = None
        self.format_version = FORMAT_VERSION
        self.attnkit_version = ""

    @property
    def n_layers(self) -> int:
        """Attention layers in the model (at least as many as the file holds)."""
        known = self.model_info.n_layers if self.model_info is not None else 0
        return max(known, max(self._records, default=-1) + 1)

    def __repr__(self) -> str:
        heads = len(self.heads) if self._records else 0
        return (f"CaptureFile({str(self.path)!r}: {self.model_name}, {len(self.layers)} layers "
                f"x {heads} heads, {self.seq_len() if self._records else 0} tokens)")


# ---- writing ---------------------------------------------------------------------------------

def save_capture(cap: Captured, path: str | os.PathLike, *, model_name: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``cap`` to ``path`` (see ``Captured.save``); returns the path."""
    if not isinstance(cap, Captured):
        raise AttnkitError(f"save_capture takes a capture; got {type(cap).__name__}")
    if model_name is not None and not isinstance(model_name, str):
        raise AttnkitError(f"model_name must be a str; got {type(model_name).__name__}")
    (target,) = check_writable([path], overwrite=overwrite)
    cap._require()
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def put(name: str, t: torch.Tensor) -> None:
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in storages:  # safetensors stores no shared memory
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t

    layers: dict[str, Any] = {}
    for layer in cap.layers:
        record = cap._records[layer]
        entry: dict[str, Any] = {"heads": list(record.heads), "n_heads": int(record.n_heads),
                                 "options": {}}
        put(f"layer.{layer}.q", record.q)
        put(f"layer.{layer}.k", record.k)
        put(f"layer.{layer}.lse", record.lse)
        for option, value in record.options.items():
            if option in ("mask", "bias", "sinks"):  # tensors
                if value is not None:
                    put(f"layer.{layer}.{option}", value)
                continue
            entry["options"][option] = _plain(option, value, layer)
        layers[str(layer)] = entry
    ids = getattr(cap, "input_ids", None)
    if isinstance(ids, torch.Tensor):
        put("input_ids", ids)
    info = cap.model_info
    header = {
        "model": model_name or cap.model_name,
        "model_info": None if info is None else info.to_dict(),
        "rotary": None if cap.rotary is None else cap.rotary.to_dict(),
        "tokens": cap._token_lists,
        "layers": layers,
        "checksums": {name: _crc(t) for name, t in tensors.items()},
    }
    from safetensors.torch import save_file

    from attnkit import __version__

    metadata = {"attnkit.format": FORMAT, "attnkit.format_version": str(FORMAT_VERSION),
                "attnkit.version": __version__, "attnkit.capture": json.dumps(header)}
    with written_together([target]) as (scratch,):
        save_file(tensors, str(scratch), metadata=metadata)
    return target


def _plain(name: str, value: Any, layer: int) -> Any:
    """An option as JSON (tuples become lists), or an error naming what cannot be saved."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and all(v is None or isinstance(v, int) for v in value):
        return list(value)
    raise AttnkitError(f"layer {layer}'s attention option {name}={type(value).__name__} cannot "
                       "be written to a capture file")


def _crc(t: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes."""
    if t.numel() == 0:
        return 0
    return zlib.crc32(t.contiguous().flatten().view(torch.uint8).numpy())


# ---- reading ---------------------------------------------------------------------------------

def load_capture(path: str | os.PathLike) -> CaptureFile:
    """Read a capture file written by ``Captured.save`` (or ``attnkit capture``).

    Returns a ``CaptureFile`` with the reading API of a live capture; loads neither
    transformers nor any model. A file that is damaged, truncated, not a capture, or from a
    newer format version raises ``CaptureFileError`` saying so."""
    from safetensors import SafetensorError, safe_open

    if not isinstance(path, (str, os.PathLike)):
        raise AttnkitError(f"load_capture takes a path; got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise CaptureFileError(f"{path} is a directory; give a capture file (.safetensors) "
                               "written by attnkit capture or Captured.save")
    if not path.exists():
        raise FileNotFoundError(f"no such capture file: {path}")
    again = "capture it again (attnkit capture ... --out FILE, or cap.save(FILE))"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            _check_format(path, metadata)
            header = _header(path, metadata, again)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as err:
        raise CaptureFileError(f"{path} is not a readable capture file ({err}): it is damaged, "
                               f"truncated or not a safetensors file; {again}") from None
    return _build(path, header, tensors, metadata, again)


def _check_format(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("attnkit.format") != FORMAT:
        raise CaptureFileError(f"{path} is a safetensors file but not an attnkit capture (its "
                               "metadata has no attnkit.format; model weights?); give a file "
                               "written by attnkit capture or Captured.save")
    raw = metadata.get("attnkit.format_version", "")
    try:
        version = int(raw)
    except ValueError:
        raise CaptureFileError(f"{path} is damaged: its format version {raw!r} is not a "
                               "number") from None
    if version > FORMAT_VERSION:
        writer = metadata.get("attnkit.version", "a newer attnkit")
        from attnkit import __version__

        raise CaptureFileError(
            f"{path} is in capture format version {version} (written by attnkit {writer}); "
            f"this attnkit ({__version__}) reads versions up to {FORMAT_VERSION}: upgrade "
            "attnkit (pip install -U attnkit) to read it")
    if version < 1:
        raise CaptureFileError(f"{path} is damaged: format version {version} does not exist")


def _header(path: Path, metadata: dict[str, str], again: str) -> dict[str, Any]:
    try:
        header = json.loads(metadata.get("attnkit.capture", ""))
    except json.JSONDecodeError as err:
        raise CaptureFileError(f"{path} is damaged: its description does not parse ({err}); "
                               f"{again}") from None
    if not isinstance(header, dict) or not isinstance(header.get("layers"), dict):
        raise CaptureFileError(f"{path} is damaged: its description has no layers; {again}")
    return header


def _build(path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor],
           metadata: dict[str, str], again: str) -> CaptureFile:
    def damaged(what: str) -> CaptureFileError:
        return CaptureFileError(f"{path} is damaged: {what}; {again}")

    try:
        checksums = {str(k): int(v) for k, v in header.get("checksums", {}).items()}
    except (AttributeError, TypeError, ValueError):
        raise damaged("its checksums do not parse") from None
    for name, t in tensors.items():
        if name not in checksums:
            raise damaged(f"tensor {name} is not listed in its description")
        if _crc(t) != checksums[name]:
            raise damaged(f"tensor {name} does not match its checksum")
    missing = sorted(set(checksums) - set(tensors))
    if missing:
        raise damaged(f"tensors {', '.join(missing)} are missing")

    cap = CaptureFile(path, str(header.get("model") or "a model"))
    cap.format_version = int(metadata["attnkit.format_version"])
    cap.attnkit_version = metadata.get("attnkit.version", "")
    try:
        cap.model_info = _model_info(header.get("model_info"))
        rotary = header.get("rotary")
        cap.rotary = None if rotary is None else Rotary.from_dict(rotary)
        for key, entry in header["layers"].items():
            layer = int(key)
            cap._records[layer] = _record(layer, entry, tensors, damaged)
    except CaptureFileError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise damaged(f"its description is inconsistent ({type(err).__name__}: {err})") from None
    if not cap._records:
        raise damaged("it holds no layer")
    shapes = {tuple(r.q.shape[:3]) for r in cap._records.values()}
    heads = {r.heads for r in cap._records.values()}
    if len(shapes) > 1 or len(heads) > 1:
        raise damaged("its layers disagree on batch, heads or length")
    batch, _, length = shapes.pop()
    tokens = header.get("tokens")
    if tokens is not None:
        if (not isinstance(tokens, list) or len(tokens) != batch
                or any(not isinstance(row, list) or len(row) != length for row in tokens)):
            raise damaged(f"its tokens do not match its {batch} x {length} queries")
        cap._token_lists = [[str(t) for t in row] for row in tokens]
    ids = tensors.get("input_ids")
    if ids is not None:
        if ids.dim() != 2 or ids.shape[0] != batch or ids.is_floating_point():
            raise damaged("its input_ids do not match its queries")
        cap.input_ids = ids
    return cap


def _model_info(info: Any) -> ModelInfo | None:
    """The model's description; fields a later attnkit added are left aside, and a description
    missing a field is dropped (it only describes; the layers are what is drawn)."""
    names = [f.name for f in fields(ModelInfo)]
    if not isinstance(info, dict) or any(name not in info for name in names):
        return None
    return ModelInfo(**{name: info[name] for name in names})


def _record(layer: int, entry: dict[str, Any], tensors: dict[str, torch.Tensor],
            damaged: Any) -> Record:
    """One layer's ``Record``, after checking every shape against the others."""
    q, k, lse = (tensors.get(f"layer.{layer}.{n}") for n in ("q", "k", "lse"))
    if q is None or k is None or lse is None:
        raise damaged(f"layer {layer} lacks q, k or lse")
    if (q.dim() != 4 or k.dim() != 4 or lse.dim() != 3 or q.dtype not in _FLOATS
            or k.dtype != q.dtype or lse.dtype not in _FLOATS):
        raise damaged(f"layer {layer}'s q, k, lse have the wrong shapes or dtypes")
    b, h, sq, d = q.shape
    if (k.shape[0] != b or k.shape[3] != d or k.shape[1] < 1 or h % k.shape[1]
            or tuple(lse.shape) != (b, h, sq)):
        raise damaged(f"layer {layer}'s q {tuple(q.shape)}, k {tuple(k.shape)} and lse "
                      f"{tuple(lse.shape)} do not fit together")
    heads = tuple(int(x) for x in entry["heads"])
    n_heads = int(entry["n_heads"])
    if len(heads) != h or any(not 0 <= x < n_heads for x in heads):
        raise damaged(f"layer {layer}'s heads {list(heads)} do not match its {h} query heads")
    options: dict[str, Any] = dict(entry.get("options", {}))
    if options.get("window") is not None:
        options["window"] = tuple(options["window"])
    for name in ("mask", "bias"):
        t = tensors.get(f"layer.{layer}.{name}")
        if t is not None:
            sizes = (b, h, sq, k.shape[2])
            if t.dim() != 4 or any(s not in (1, full) for s, full in zip(t.shape, sizes)):
                raise damaged(f"layer {layer}'s {name} {tuple(t.shape)} does not broadcast to "
                              f"{sizes}")
            if (name == "mask") != (t.dtype == torch.bool):
                raise damaged(f"layer {layer}'s {name} has dtype {t.dtype}")
        options[name] = t
    sinks = tensors.get(f"layer.{layer}.sinks")
    if sinks is not None and (sinks.dim() != 1 or sinks.shape[0] != h
                              or not sinks.is_floating_point()):
        raise damaged(f"layer {layer}'s sinks {tuple(sinks.shape)} {sinks.dtype} are not one "
                      f"float per captured head ({h})")
    options["sinks"] = sinks
    return Record(q, k, lse, options, heads, n_heads)
