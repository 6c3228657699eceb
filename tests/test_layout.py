"""The shape of bench/ as the project's style asks for it, read from the source with `ast`: no function over 60 lines,
and imports at the top of the file, except optional dependencies imported where they are used (with a comment)."""

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MAX_LINES = 60

# Optional dependencies, imported late so that everything else works without them: (file, top-level package).
OPTIONAL = {
    ("gpu_check.py", "diffusers"),  # the `peers` extra, only for the comparison with diffusers' UNet
}

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
    for fn, module, line in _late_imports(tree):
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
    (tmp_path / "gpu_check.py").write_text("def peer():\n    import diffusers\n    return diffusers\n")
    assert offences(tmp_path / "gpu_check.py", tmp_path) == [
        "gpu_check.py:2 optional import of diffusers in peer without a comment saying why"]
    (tmp_path / "gpu_check.py").write_text("def peer():\n    import diffusers  # optional: the peers extra\n")
    assert offences(tmp_path / "gpu_check.py", tmp_path) == []


@pytest.mark.parametrize("path", _files(), ids=_name)
def test_short_functions_and_imports_at_the_top(path):
    assert offences(path) == []
