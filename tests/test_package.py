"""The top-level package: lazy exports that keep `import selconv` light."""

import subprocess
import sys

import pytest

import selconv


def test_every_export_resolves():
    for name in selconv.__all__:
        assert getattr(selconv, name) is not None, name


@pytest.mark.slow
def test_import_does_not_load_torch():
    code = "import sys, selconv; from selconv import MaxMask, make_paper_pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        selconv.NoSuchThing  # noqa: B018
