"""gan-vs-diffusion: the harness behind the `gvd` command, and a small Python API (README: Python API):

    from bench import score, load_run

Both load on first use (PEP 562 module __getattr__), so `import bench` and `gvd --help` stay instant (no torch).
"""

from importlib import import_module as _import_module

_API = {"score": "bench.run.api", "load_run": "bench.run.api", "Run": "bench.run.api"}


def __getattr__(name: str):
    if name in _API:
        return getattr(_import_module(_API[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
