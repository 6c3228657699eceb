"""What README.md promises a newcomer holds: every file path and module it names exists (a path that moved into a
sub-package is a newcomer's first "No module named ..."), and every run time it quotes is the one measurement
bench/catalog.py MEASURED holds, as `gvd presets` and reports/README.md quote it."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import catalog

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", ROOT / "tests" / "benchmarks" / "README.md", ROOT / "reports" / "README.md"]
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)  # code blocks and code spans: where commands and paths are written
PATH = re.compile(r"(?<![\w./$-])((?:bench|models|tests|reports|\.ci)/[\w./-]*[\w/])")
DOTTED = re.compile(r"(?<![\w./-])((?:bench|models)(?:\.\w+)+)")
MODULE = re.compile(r"python -m ([\w.]+)")
OUTPUT = re.compile(r"^reports/(?!example\b|README\.md$)")  # run folders a command writes (reports/quick/, ...)


def _code(doc: Path) -> str:
    return "\n".join(m.group(0) for m in CODE.finditer(doc.read_text()))


def _named(pattern: re.Pattern, doc: Path, prose: bool = False) -> set[str]:
    """What the pattern finds in the doc's code (and in its prose too, with prose=True)."""
    return {m.group(1).rstrip(".") for m in pattern.finditer(doc.read_text() if prose else _code(doc))}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_doc_names_exists(doc):
    """bench/rundir.py, bench/metrics.py, ... moved into bench/core/, bench/evaluate/, ...: a doc that still names the
    old place sends a newcomer to a file that is not there."""
    paths = {p for p in _named(PATH, doc, prose=True) if not OUTPUT.match(p)}
    if doc.parent.name == "benchmarks":  # its own files by their bare names
        paths |= {f"tests/benchmarks/{m}" for m in re.findall(r"`(\w+\.py)`", doc.read_text())}
    assert paths or doc.name == "README.md" and doc.parent.name == "reports"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def _resolves(dotted: str) -> bool:
    """A module, or an attribute of the longest importable module prefix (bench.evaluate.protocol.comparable)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            node = importlib.import_module(".".join(parts[:cut]))
        except ImportError:  # not a module (or not one of these parents): try a shorter prefix
            continue
        for attr in parts[cut:]:
            if not hasattr(node, attr):
                return False
            node = getattr(node, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_a_doc_names_imports(doc):
    """`python -m bench.gpu_check` failed with "No module named bench.gpu_check" (it is bench/speed/gpu_check.py);
    every `python -m` module and every dotted name (bench.x.y) a doc gives must resolve."""
    names = _named(MODULE, doc, prose=True) | _named(DOTTED, doc)
    bad = sorted(n for n in names if not _resolves(n))
    assert not bad, f"{doc.relative_to(ROOT)} names modules or attributes that do not exist: {bad}"


def test_the_stale_names_the_issue_found_are_caught():
    """The checker itself: the names issue 35 found stale are found stale."""
    assert not _resolves("bench.gpu_check") and not _resolves("bench.protocol.comparable")
    assert _resolves("bench.speed.gpu_check") and _resolves("bench.evaluate.table.METRICS")
    assert not (ROOT / "bench/rundir.py").exists() and (ROOT / "bench/core/rundir.py").exists()
    code = "run `python -m bench.gpu_check`, see `bench/metrics.py` and `bench.protocol.comparable`"
    doc = ROOT / "README.md"
    assert {m.group(1) for m in MODULE.finditer(code)} == {"bench.gpu_check"}
    assert {m.group(1) for m in PATH.finditer(code)} == {"bench/metrics.py"}
    assert {m.group(1) for m in DOTTED.finditer(code)} == {"bench.gpu_check", "bench.protocol.comparable"}
    assert "bench/core/rundir.py" in _named(PATH, doc)


# ---------------------------------------------------------------- run times: one measurement, quoted everywhere


def test_every_preset_time_is_the_one_measurement():
    """README's presets table, `gvd presets` and reports/README.md quote each measured preset's time as
    bench/catalog.py MEASURED has it (once disagreeing: 12:29 vs 22:07 vs 1,310 s), and a preset without a
    measurement is quoted with no time."""
    readme = (ROOT / "README.md").read_text()
    table = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)`.*$", readme, re.M)
             if m.group(1) in catalog.PRESETS}
    listing = subprocess.run([sys.executable, "-m", "bench", "presets"], capture_output=True, text=True, check=True,
                             timeout=600).stdout
    for name in catalog.PRESETS:
        line = next(x for x in listing.splitlines() if x.startswith(name + " "))
        if name in catalog.MEASURED:
            quoted = catalog.duration(catalog.MEASURED[name].seconds)
            assert quoted in table[name], (name, table[name])
            assert quoted in line, (name, line)
        else:
            assert not re.search(r"\d+ (?:min|s)\b|minutes|seconds", table[name] + line), (name, table[name], line)
    quick = catalog.duration(catalog.MEASURED["quick"].seconds)
    assert quick in (ROOT / "reports" / "README.md").read_text()
    start = readme.split("## Commands")[0]  # the quick start quotes the same times
    assert quick in start and catalog.duration(catalog.MEASURED["smoke"].seconds) in start
    assert "12 min 29 s" not in readme + (ROOT / "reports" / "README.md").read_text()


def test_duration_reads_as_readme_writes_it():
    assert [catalog.duration(s) for s in (47, 60, 194, 1310.4)] == ["47 s", "1 min 00 s", "3 min 14 s", "21 min 50 s"]


def test_the_quick_time_is_the_committed_examples_own():
    """The quick preset's time is the wall time the committed example recorded (results.json "stages"): regenerating
    the example means updating MEASURED with its time, so README never quotes another run's."""
    import json

    results = json.loads((ROOT / "reports" / "example" / "results.json").read_text())
    assert results["suite"] == "quick"
    assert round(results["stages"]["wall_s"]) == catalog.MEASURED["quick"].seconds
