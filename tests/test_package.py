"""The top-level package: lazy exports that keep `import selconv` light."""

import re
import subprocess
import sys

import pytest

import selconv


def test_every_export_resolves_to_the_object_of_that_name():
    for name in selconv.__all__:
        exported = getattr(selconv, name)
        if name == "__version__":
            assert re.fullmatch(r"\d+\.\d+\.\d+\S*", exported), exported
        else:  # a class or function of that name, or a callable object (map_scorer)
            assert callable(exported) and getattr(exported, "__name__", name) == name, name


@pytest.mark.slow
def test_import_does_not_load_torch():
    code = "import sys, selconv; from selconv import MaxMask, make_paper_pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        selconv.NoSuchThing  # noqa: B018
