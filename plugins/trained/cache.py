"""The model cache: one checkpoint file per cache key, reused only when it provably is that key's model.

A file is used only if it reads (safetensors, :data:`~.fileformat.MODEL_FORMAT`), its tensors match its content
hash, its meta names the same key, cell, seed, settings and architecture, and its tensors have the cell's
shapes. Anything else (a truncated or corrupted file, a file from another key copied under this name, a file
without a hash) is retrained and overwritten, never used; the row's ``cache_rejected`` says why.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .fileformat import ModelFileError, read_model_file
from .settings import Settings


def load_cached(path: Path, key: str, n_s: int, n_d: int, p: float, seed: int, settings: Settings, arch: str,
                arch_options: dict) -> tuple[dict | None, dict | None, str | None]:
    """``(tensors, meta, None)`` for a usable cache file, ``(None, None, why)`` otherwise (``why`` is None when
    there is no file)."""
    if not path.is_file():
        return None, None, None
    try:
        tensors, meta = read_model_file(path, require_hash=True)
    except ModelFileError as exc:
        return None, None, str(exc)
    expect = {"key": key, "n_s": n_s, "n_d": n_d, "p": p, "seed": seed, "settings": asdict(settings)}
    for k, v in expect.items():
        if meta.get(k) != v:
            return None, None, f"cache file {path.name}: its {k} is {meta.get(k)!r}, expected {v!r}"
    if meta.get("arch", "relu") != arch or dict(meta.get("arch_options") or {}) != dict(arch_options):
        return None, None, (f"cache file {path.name}: activation {meta.get('arch')!r} {meta.get('arch_options')!r}, "
                            f"expected {arch!r} {arch_options!r}")
    shapes = {"W_in": (n_d, n_s), "W_out": (n_s, n_d), "b": (n_s,)}
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            return None, None, f"cache file {path.name}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}"
    if "steps" not in meta or "rule_losses" not in tensors or "last_losses" not in tensors:
        return None, None, f"cache file {path.name} is not a training checkpoint"
    return tensors, meta, None
