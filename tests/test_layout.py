"""The shape of bench/ as the project's style asks for it, read from the source with `ast`: rooms (sub-packages) of
at most MAX_MODULES modules with no import from a room above, no function over 60 lines, imports at the top of the
file (except optional dependencies imported where they are used, with a comment, and the CLI's per-command stacks),
and a CLI that answers --help, presets and datasets without loading torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MAX_LINES = 60
MAX_MODULES = 10  # modules per room, __init__.py not counted
# The rooms from the bottom up: a module may import from its own room and the rooms below it, never above.
# catalog.py and errors.py import nothing of bench/; config.py holds the typed configs the rooms above it read;
# cli.py and __main__.py are the door.
ROOMS = ["catalog", "errors", "core", "data", "train", "config", "families", "evaluate", "speed", "report", "run",
         "cli", "__main__"]

# Optional dependencies, imported late so that everything else works without them: (file, top-level package).
OPTIONAL = {
    ("speed/gpu_check.py", "diffusers"),  # the `peers` extra, only for the comparison with diffusers' UNet
    ("speed/history.py", "ruptures"),  # the `history` extra, only for the change points of `gvd speed --history`
    ("core/executor.py", "ray"),  # the `ray` extra, only for --executor ray
}
LATE_IMPORTS = {"cli.py"}  # each subcommand imports its stack when it runs (an instant --help; module docstring)

def _files() -> list[Path]:
    return sorted(BENCH.rglob("*.py"))


def _name(path: Path, root: Path = BENCH) -> str:
    return path.relative_to(root).as_posix()


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _late_imports(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(function, imported module, line) for every import statement inside a function body."""
    out = []
    for fn in _functions(tree):
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                out += [(fn.name, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                out.append((fn.name, "." * node.level + (node.module or ""), node.lineno))
    return out


def offences(path: Path, root: Path = BENCH) -> list[str]:
    """What in one file breaks the two rules, each as a readable line; allowed exceptions left out."""
    name, source = _name(path, root), path.read_text()
    tree, lines = ast.parse(source), source.splitlines()
    found = []
    for fn in _functions(tree):
        length = fn.end_lineno - fn.lineno + 1
        if length > MAX_LINES:
            found.append(f"{name}:{fn.lineno} {fn.name} is {length} lines (at most {MAX_LINES})")
    for fn, module, line in _late_imports(tree) if name not in LATE_IMPORTS else []:
        if (name, module.split(".")[0]) in OPTIONAL:
            if "#" not in lines[line - 1] + lines[line - 2]:
                found.append(f"{name}:{line} optional import of {module} in {fn} without a comment saying why")
            continue
        found.append(f"{name}:{line} imports {module} inside {fn}")
    return found


def test_the_checker_sees_long_functions_and_late_imports(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))  # with the def line: MAX_LINES + 1 lines
    (tmp_path / "bad.py").write_text(f"def long():\n{body}\n\n\ndef late():\n    import json\n    return json\n")
    (tmp_path / "good.py").write_text("import json\n\n\ndef short():\n    return json\n")
    assert offences(tmp_path / "bad.py", tmp_path) == [
        f"bad.py:1 long is {MAX_LINES + 1} lines (at most {MAX_LINES})",
        f"bad.py:{MAX_LINES + 5} imports json inside late"]
    assert offences(tmp_path / "good.py", tmp_path) == []
    # an optional dependency may come late, but only with a comment saying why
    (tmp_path / "speed").mkdir()
    (tmp_path / "speed" / "gpu_check.py").write_text("def peer():\n    import diffusers\n    return diffusers\n")
    assert offences(tmp_path / "speed" / "gpu_check.py", tmp_path) == [
        "speed/gpu_check.py:2 optional import of diffusers in peer without a comment saying why"]
    (tmp_path / "speed" / "gpu_check.py").write_text("def peer():\n    import diffusers  # optional: the peers extra\n")
    assert offences(tmp_path / "speed" / "gpu_check.py", tmp_path) == []


@pytest.mark.parametrize("path", _files(), ids=_name)
def test_short_functions_and_imports_at_the_top(path):
    assert offences(path) == []


def _room(module: str) -> str:
    """The room of a module given as a dotted name below bench ("core.files" -> "core", "cli" -> "cli")."""
    return module.split(".")[0]


def _bench_imports(path: Path) -> list[tuple[str, int]]:
    """(imported bench module below bench/, line) for every import of bench in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
            names = [node.module] if node.module != "bench" else [f"bench.{a.name}" for a in node.names]
            out += [(n.removeprefix("bench.") or "bench", node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            out += [(a.name.removeprefix("bench."), node.lineno) for a in node.names if a.name.startswith("bench.")]
    return out


def upward_imports(root: Path = BENCH) -> list[str]:
    """Every import from a room above the importing module's own, as a readable line."""
    found = []
    for path in sorted(root.rglob("*.py")):
        mine = _room(_name(path, root).removesuffix(".py").replace("/", "."))
        for module, line in _bench_imports(path):
            theirs = _room(module)
            if theirs in ROOMS and ROOMS.index(theirs) > ROOMS.index(mine):
                found.append(f"{_name(path, root)}:{line} imports bench.{module} (room {theirs} is above {mine})")
    return found


def test_the_checker_sees_an_upward_import(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "x.py").write_text("from bench.report.build import write_report\nfrom bench.core import y\n")
    assert upward_imports(tmp_path) == ["core/x.py:1 imports bench.report.build (room report is above core)"]


def test_no_room_imports_from_a_room_above_it():
    assert upward_imports() == []


def test_every_module_lives_in_a_known_room_of_at_most_ten_modules():
    tops = {p.name.removesuffix(".py") for p in BENCH.glob("*.py")} - {"__init__"}
    assert tops <= set(ROOMS), tops - set(ROOMS)
    for room in (p for p in BENCH.iterdir() if p.is_dir() and not p.name.startswith("__")):
        assert room.name in ROOMS, room.name
        modules = [p for p in room.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES, (room.name, len(modules))


@pytest.mark.parametrize("args", [["--help"], ["presets"], ["datasets"]])
def test_the_light_commands_import_no_torch(args):
    """`python -X importtime -m bench presets` lists every module it imports: torch (and clean-fid) are not among
    them, so the commands answer at once."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", *args], capture_output=True, text=True,
                          timeout=600, check=False)  # a hang guard
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "bench" in imported and not imported & {"torch", "cleanfid", "numpy", "torchvision"}, imported


def test_a_non_editable_install_carries_every_package():
    """pyproject listed `packages = ["bench", "models"]`, which setuptools takes literally: a wheel had bench/*.py and
    none of bench/core, bench/run, ... (only the editable install worked). Every package folder under bench/ and
    models/ must be one that the configured find would include."""
    import fnmatch

    import tomllib
    from setuptools import find_packages

    root = Path(__file__).parents[1]
    find = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = set(find_packages(str(root), include=find["include"]))
    folders = {".".join(p.parent.relative_to(root).parts) for top in ("bench", "models")
               for p in (root / top).rglob("__init__.py")}
    assert folders and folders <= found, sorted(folders - found)
    assert not any(fnmatch.fnmatch(p, "tests*") for p in found)
