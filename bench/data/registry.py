"""dataset_info(name): what a dataset is (benchmark, channels, modes), from bench/catalog.py for the built-in ones
and by reading the data for those that take a path (a folder's channels and classes are its own). The one place the
rest of the suite learns a dataset's channel count from."""

from dataclasses import replace
from functools import lru_cache

from bench import catalog
from bench.data.images import DataError, load_image_dataset


@lru_cache(maxsize=32)
def dataset_info(name: str, check: bool = False, resolution: int = 16) -> catalog.DatasetInfo:
    """The DatasetInfo of a dataset name; DataError (one line) for a name the suite cannot load. A folder is read to
    learn its channels and classes; check=True draws a few images of every image dataset at `resolution` (a folder,
    a torchvision root read whole), so a missing or unreadable one, or a resolution it cannot be drawn at, fails
    now, before the run folder is written, rather than after hours of training."""
    try:
        info = catalog.static_info(name)
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(catalog.dataset_names())}") from None
    if info.kind == "image" and (info.channels is None or check):
        data = load_image_dataset(name, 0 if ":" in name else 2, resolution if check else 16, seed=0)
        info = replace(info, channels=data.images.shape[1], num_modes=data.num_modes)
    return info
