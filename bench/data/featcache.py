"""Reference features cached on disk, so a second run does not push the same real images through Inception again.

An entry is keyed by (content hash of the images, SHA-256 of the backbone's weights, its preprocessing): features are
reused only for the very same images through the very same network. It is two files in <cache>/features/:
<key>.npy (the float64 features) and <key>.json (what they are, plus the .npy file's SHA-256). The .json is written
last (each file atomically), so an entry without one is incomplete; an entry whose .npy does not match its checksum
or shape is corrupt. Either is recomputed and rewritten.
"""

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from bench.core.files import atomic_write, content_hash, used_cache

CACHE_VERSION = 1  # part of the key: bump when the feature pipeline changes


def _read_entry(npy: Path, meta_path: Path, key: str) -> np.ndarray | None:
    """The cached features, or None when the entry is missing, incomplete or corrupt."""
    try:
        meta = json.loads(meta_path.read_text())
        blob = npy.read_bytes()
        if meta.get("key") != key or hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            return None
        feats = np.load(io.BytesIO(blob), allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return feats if list(feats.shape) == meta.get("shape") else None


def cached_features(images, backbone, cache_dir: str | Path) -> tuple[np.ndarray, bool]:
    """backbone.features(images), from the cache when a sound entry exists (True), else computed and stored (False).
    backbone needs `features`, `name`, `weights_sha256`, `resize` and `size` (bench.data.inception.Backbone)."""
    images_hash = content_hash(images)
    ident = {"version": CACHE_VERSION, "images": images_hash, "weights_sha256": backbone.weights_sha256,
             "resize": backbone.resize, "size": backbone.size}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    folder = Path(cache_dir) / "features"
    npy, meta_path = folder / f"{key[:32]}.npy", folder / f"{key[:32]}.json"
    used_cache(npy, meta_path)
    if (feats := _read_entry(npy, meta_path, key)) is not None:
        return feats, True
    feats = np.asarray(backbone.features(images), dtype=np.float64)
    buf = io.BytesIO()
    np.save(buf, feats, allow_pickle=False)
    blob = buf.getvalue()
    atomic_write(npy, blob)
    meta = {"key": key, **ident, "backbone": backbone.name, "shape": list(feats.shape),
            "sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write(meta_path, json.dumps(meta, indent=1).encode())
    return feats, False
