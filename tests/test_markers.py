"""The markers' rules hold (conftest's docstring states them): shared data only in tests marked shared_data,
subprocesses, Dask and browsers only in tests marked slow, pretrained CNNs only in tests marked slow."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import conftest
import pytest
from conftest import refuse_pretrained, require_shared_data

TESTS = Path(__file__).resolve().parent
# What a test (or a helper or fixture of its module it uses) must not do without the marker.
NEEDS = {
    "shared_data": re.compile(r"\brequire_shared_data\b|\bSHARED_DATA\b|shared/data"),
    "slow": re.compile(r"\bsubprocess\.|\bsys\.executable\b|\bLocalCluster\b|\bdask\b|chromium|n_jobs=[2-9]"),
}


def _marks(node) -> set[str]:
    """Marker names of ``@pytest.mark.x`` decorators and of ``pytestmark = pytest.mark.x`` assignments."""
    text = " ".join(ast.unparse(d) for d in getattr(node, "decorator_list", []))
    if isinstance(node, ast.Module):
        text = " ".join(
            ast.unparse(n.value) for n in node.body if isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n)
        )
    return set(re.findall(r"pytest\.mark\.(\w+)", text))


def _doing(module: ast.Module, source: str, pattern) -> set[str]:
    """Names of the module's functions that match ``pattern`` or use (call or take as fixture) one that does."""
    functions = [n for n in ast.walk(module) if isinstance(n, ast.FunctionDef)]
    uses = {
        node.name: {a.arg for a in node.args.args}
        | {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
        for node in functions
    }
    lines = source.splitlines()
    doing = {node.name for node in functions if pattern.search("\n".join(lines[node.lineno - 1 : node.end_lineno]))}
    while True:
        more = {name for name, used in uses.items() if name not in doing and used & doing}
        if not more:
            return doing
        doing |= more


def unmarked_tests(path: Path) -> list[str]:
    """'file::test needs marker' for every test of ``path`` that breaks a rule."""
    source = path.read_text()
    module = ast.parse(source)
    module_marks = _marks(module)
    problems = []
    for marker, pattern in NEEDS.items():
        doing = _doing(module, source, pattern)
        for scope in [module, *(n for n in module.body if isinstance(n, ast.ClassDef))]:
            for node in scope.body:
                if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test") and node.name in doing):
                    continue
                if marker not in module_marks | _marks(scope) | _marks(node):
                    problems.append(f"{path.name}::{node.name} needs @pytest.mark.{marker}")
    return problems


def test_every_test_that_needs_a_marker_has_it():
    problems = [
        p for path in sorted(TESTS.glob("test_*.py")) if path.name != Path(__file__).name for p in unmarked_tests(path)
    ]
    assert not problems, "\n".join(problems)


def test_the_marker_check_finds_unmarked_tests(tmp_path):
    path = tmp_path / "test_sample.py"
    path.write_text(
        "import subprocess, sys\n"
        "import pytest\n"
        "def run_it():\n    return subprocess.run([sys.executable, '-c', 'pass'])\n"
        "@pytest.fixture\ndef data():\n    return require_shared_data('x')\n"
        "def test_runs():\n    run_it()\n"
        "@pytest.mark.slow\ndef test_runs_marked():\n    run_it()\n"
        "def test_reads(data):\n    pass\n"
        "@pytest.mark.shared_data\ndef test_reads_marked(data):\n    pass\n"
        "def test_plain():\n    pass\n"
    )
    assert unmarked_tests(path) == [
        "test_sample.py::test_reads needs @pytest.mark.shared_data",
        "test_sample.py::test_runs needs @pytest.mark.slow",
    ]


def test_reading_shared_data_without_the_marker_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)  # present: without the rule the call would return it
    with pytest.raises(pytest.fail.Exception, match="mark it @pytest.mark.shared_data"):
        require_shared_data()


@pytest.mark.shared_data
def test_a_marked_test_skips_without_the_data(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "absent")
    with pytest.raises(pytest.skip.Exception, match="needs the shared real-image data"):
        require_shared_data("oxford5k-subset")

    class Item:
        def get_closest_marker(self, name):
            return object() if name == "shared_data" else None

    with pytest.raises(pytest.skip.Exception, match="needs the shared real-image data"):
        conftest.pytest_runtest_setup(Item())


def test_a_pretrained_forward_pass_outside_slow_tests_fails():
    class Extractor:
        backbone, weights = "vgg16", "imagenet"

    transform = refuse_pretrained(lambda self, images: images)
    with pytest.raises(pytest.fail.Exception, match="mark it @pytest.mark.slow"):
        transform(Extractor(), [])
    Extractor.weights = None
    assert transform(Extractor(), ["image"]) == ["image"]
    Extractor.backbone, Extractor.weights = len, "imagenet"  # a factory builds the test's own network
    assert transform(Extractor(), ["image"]) == ["image"]


def test_the_pretrained_check_is_installed_in_tests_not_marked_slow():
    from selconv import ConvFeatureExtractor

    assert ConvFeatureExtractor.transform.__code__ is refuse_pretrained(len).__code__
