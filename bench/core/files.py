"""One helper per concern of writing and identifying things: atomic writes, JSON and CSV, content hashes, versions.

Every file the suite writes goes through `atomic_write` (safetensors files through `save_tensors`): a temporary file
in the same folder, then a rename, so a reader never sees half a file and an interrupted run keeps what it finished.
A write that fails (a full disk, a read-only folder) raises WriteError naming the file; the temporary file is removed
and the old file, if any, is untouched. Files get the user's umask (mkstemp alone would leave them readable by their
owner only); nothing the suite writes is private.
"""

import csv
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file


class WriteError(OSError):
    """A file could not be written; the message is one line naming it and why (the CLI prints it, exit status 1)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write data to path through a temporary file and a rename, with the user's umask. Raises WriteError (one line:
    the path and the OS's reason) when the disk is full or the folder is not writable; nothing half-written is left
    behind."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    _through_temporary(Path(path), write)


def save_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """A safetensors file written as atomic_write writes, by safetensors' own writer (it streams the tensors: 2-3x
    faster than serialising them in memory first for an 85 MB training state); its I/O errors are the same one-line
    WriteError."""
    _through_temporary(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _through_temporary(path: Path, write) -> None:
    """write(tmp) makes a temporary file in path's folder, which becomes path by a rename once whole (atomic_write)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise WriteError(f"could not write {path}: {_reason(exc)}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _reason(exc: Exception) -> str:
    """The OS's words for a failed write: an OSError's strerror; safetensors says 'Error while serializing: I/O error:
    No space left on device (os error 28)'."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r" \(os error \d+\)$", "", text.split("I/O error: ")[-1])


_noting: list[set] = []  # the sets of the open noting_cache() blocks


@contextmanager
def noting_cache():
    """Yields the set of the cache files (under $GVD_CACHE: judges, text encoders, reference features) read or written
    within the block: what a job needs from the cache, so that a job on another machine gets the files instead of
    making them again (bench/core/executor.py ships them to a Ray cluster's nodes)."""
    seen: set[Path] = set()
    _noting.append(seen)
    try:
        yield seen
    finally:
        _noting.remove(seen)


def used_cache(*paths) -> None:
    """Note cache files that were read or written (noting_cache)."""
    for seen in _noting:
        seen.update(Path(p) for p in paths)


def json_safe(value):
    """NaN and inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def json_text(obj) -> str:
    return json.dumps(json_safe(obj), indent=2) + "\n"


def csv_text(rows: list[dict]) -> str:
    """Rows of dicts as CSV with the union of keys as columns (first-seen order)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_json(path: Path, obj) -> None:
    atomic_write(path, json_text(obj))


def content_hash(*arrays) -> str:
    """sha256 of arrays' dtypes, shapes and values (torch tensors or numpy arrays), in order: the identity of an image
    set, a split with its labels, a reference set."""
    digest = hashlib.sha256()
    for array in arrays:
        arr = (array.detach().cpu().contiguous().numpy() if isinstance(array, torch.Tensor)
               else np.ascontiguousarray(array))
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def module_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and values in name order): the identity of trained weights
    that are not a file, such as the judge's."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(device=None) -> dict:
    """Versions of everything that changes the numbers: Python, torch (the networks), numpy and scipy (the maths),
    clean-fid (the resizer and KID), Pillow (the bicubic resize); on a CUDA device also CUDA, cuDNN and its name."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "scipy": _version("scipy"), "clean-fid": _version("clean-fid"), "pillow": _version("pillow")}
    if device is not None and torch.device(device).type == "cuda":
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   device_name=torch.cuda.get_device_name(device))
    return out
