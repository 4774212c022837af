"""The API reference (docs/api.rst) documents every public name of selconv, and nothing that is gone.

Reads the autosummary entries of docs/api.rst as text (no Sphinx build) and compares them with
``selconv.__all__``, the ``__all__`` of every public submodule and subpackage, and, for the public
modules without ``__all__`` (``selconv.metrics``, ``selconv.search``, ...), the classes and functions
they define.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import selconv

API_RST = Path(__file__).resolve().parents[1] / "docs" / "api.rst"


def documented_entries(text: str) -> list[str]:
    """Full names listed under every ``.. autosummary::`` directive (options and blank lines skipped).

    A relative entry is taken relative to the module the last ``.. module::`` or ``.. currentmodule::``
    set, as autosummary does.
    """
    names, inside, current = [], False, None
    for line in text.splitlines():
        module = re.match(r"\.\. (?:py:)?(?:current)?module:: *(\S+)", line)
        if module:
            current, inside = module.group(1), False
            continue
        if re.match(r"\.\. autosummary::", line):
            inside = True
            continue
        if inside:
            stripped = line.strip()
            if not stripped or stripped.startswith(":"):
                continue
            if not line.startswith((" ", "\t")):
                inside = False
                continue
            relative = current is not None and not stripped.startswith("selconv.")
            names.append(f"{current}.{stripped}" if relative else stripped)
    return names


def resolve(dotted: str):
    """The object a dotted name in the reference stands for (module, or module attribute)."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, attribute = dotted.rpartition(".")
        return getattr(importlib.import_module(module), attribute)


def public_modules() -> list[str]:
    """selconv, every module or package with ``__all__``, and the top-level modules without one.

    A module inside a subpackage that has ``__all__`` (``selconv.datasets.base``) is an implementation
    module: the subpackage's ``__all__`` says which of its names are public.
    """
    names = ["selconv"]
    for info in pkgutil.walk_packages(selconv.__path__, prefix="selconv."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        parent = importlib.import_module(info.name.rpartition(".")[0])
        if hasattr(module, "__all__") or parent is selconv or not hasattr(parent, "__all__"):
            names.append(info.name)
    return names


def public_names(module) -> list[str]:
    if hasattr(module, "__all__"):
        return [name for name in module.__all__ if not (name.startswith("__") and name.endswith("__"))]
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    ]


@pytest.fixture(scope="module")
def documented():
    """id() of every documented object; a documented module documents its public names too."""
    entries = documented_entries(API_RST.read_text())
    assert len(entries) > 50, f"parsed only {entries} from {API_RST}"
    objects = {}
    for entry in entries:
        value = resolve(entry)
        objects[id(value)] = entry
        if inspect.ismodule(value):
            for name in public_names(value):
                objects[id(getattr(value, name))] = f"{entry}.{name}"
    return entries, objects


def test_reader_finds_entries_and_stops_at_the_directive_end():
    text = (
        ".. autosummary::\n   :toctree: generated\n\n   selconv.b\n   selconv.c.d\n\nText after.\n   not.an.entry\n"
        ".. module:: selconv.m\n\n.. autosummary::\n\n   Name\n   selconv.other.Name\n"
    )
    assert documented_entries(text) == ["selconv.b", "selconv.c.d", "selconv.m.Name", "selconv.other.Name"]


def test_every_documented_name_exists(documented):
    entries, _ = documented
    assert len(entries) == len(set(entries)), "an entry is listed twice in docs/api.rst"
    for entry in entries:
        resolve(entry)  # raises, naming the entry, when it no longer exists


@pytest.mark.parametrize("module_name", public_modules())
def test_every_public_name_is_in_the_reference(module_name, documented):
    _, objects = documented
    module = importlib.import_module(module_name)
    missing = []
    for name in public_names(module):
        value = getattr(module, name)
        if inspect.ismodule(value):
            continue  # a subpackage is documented through its own names
        # Constants such as the str SAMPLE_ROOT path or an int label are compared by name: equal small
        # values can share an id with unrelated objects, so identity alone could hide them.
        if isinstance(value, (str, int, float, bool, Path)) or value is None:
            if not any(entry.endswith(f".{name}") for entry in objects.values()):
                missing.append(name)
        elif id(value) not in objects:
            missing.append(name)
    assert not missing, f"{module_name}: public names absent from docs/api.rst: {missing}"
