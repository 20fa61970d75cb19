"""The model file: one safetensors file per model (and, in the cache, its training checkpoint).

Tensors: ``W_in`` (n_d x n_s), ``W_out`` (n_s x n_d), ``b`` (n_s), the architecture's extra tensors under
``extra.<name>`` (``extra.theta``; ``extra.r_mag``, ``extra.b_mag``) and, in a checkpoint, the optimiser state,
loss windows and the training stream's generator state. String metadata: ``format`` (:data:`MODEL_FORMAT`),
``meta`` (a JSON object: cell, seed, settings, steps, stop reason, cache key, ``arch``, ``arch_options``) and
``content_sha256``, a SHA-256 over every tensor's name, dtype, shape and bytes, written last and checked on
every read: a file whose tensors do not hash to it is refused (:class:`ModelFileError`). Files written before
the hash existed (decoderbench 0.1.0) still load with :func:`load_model` (the model's ``content_verified`` is
False) but are never reused from the cache. The model's ``meta`` round-trips exactly; ``arch`` and ``arch_options``
are stored beside it and come back as the model's attributes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .model import TrainedModel

MODEL_FORMAT = "decoderbench-trained-1"
EXTRA_PREFIX = "extra."


class ModelFileError(ValueError):
    """A model file that cannot be read, is not a decoderbench model, or whose content fails its hash."""


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(path, model: TrainedModel, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (and optional extra tensors, e.g. optimizer state) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"W_in": model.W_in, "W_out": model.W_out, "b": model.b,
               **{EXTRA_PREFIX + k: v for k, v in model.extras.items()}, **(extra or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {**model.meta, "arch": model.arch, "arch_options": model.arch_options}
    metadata = {"format": MODEL_FORMAT, "meta": json.dumps(meta, sort_keys=True),
                "content_sha256": content_hash(tensors)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_model_file(path, require_hash: bool = False) -> tuple[dict, dict]:
    """``(tensors, meta)`` of a model file; :class:`ModelFileError` if it is unreadable, not a model, or its
    content does not match its hash (or has none, with ``require_hash``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model path must be an existing safetensors file, got {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != MODEL_FORMAT:
                raise ModelFileError(f"model path {str(path)!r} is not a decoderbench trained model "
                                     f"(format {metadata.get('format')!r}, expected {MODEL_FORMAT!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(metadata.get("meta", "{}"))
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"model path {str(path)!r} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"model path {str(path)!r}: its meta is not a JSON object")
    stored = metadata.get("content_sha256")
    if stored is None:
        if require_hash:
            raise ModelFileError(f"model path {str(path)!r} has no content hash (written before decoderbench 0.1.1)")
        meta["content_verified"] = False
    elif stored != content_hash(tensors):
        raise ModelFileError(f"model path {str(path)!r}: its tensors do not match its content hash")
    else:
        meta["content_verified"] = True
    for name in ("W_in", "W_out", "b"):
        if name not in tensors:
            raise ModelFileError(f"model path {str(path)!r} lacks the tensor {name!r}")
    return tensors, meta


def model_from_tensors(tensors: dict, meta: dict) -> TrainedModel:
    from .arch import ARCHS

    arch = meta.get("arch", "relu")
    if arch not in ARCHS:
        raise ModelFileError(f"model file names activation {arch!r}; known: {', '.join(ARCHS)}")
    extras = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    missing = [e for e in ARCHS[arch].extras if e not in extras]
    if missing:
        raise ModelFileError(f"model file of activation {arch!r} lacks the tensor extra.{missing[0]}")
    meta = dict(meta)
    verified = meta.pop("content_verified", None)
    meta.pop("arch", None)
    arch_options = dict(meta.pop("arch_options", None) or {})
    return TrainedModel(tensors["W_in"], tensors["W_out"], tensors["b"], meta, arch=arch,
                        extras={e: extras[e] for e in ARCHS[arch].extras}, arch_options=arch_options,
                        content_verified=verified)


def load_model(path) -> TrainedModel:
    """Read a model written by :func:`save_model` (checkpoint tensors are ignored)."""
    return model_from_tensors(*read_model_file(path))
