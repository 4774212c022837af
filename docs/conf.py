"""Sphinx configuration of the selconv documentation site (built by ``make docs``).

Built with warnings as errors (``-W --keep-going``) and ``nitpicky``, so every internal link and every
cross-reference to a selconv name must resolve. The markdown pages under docs/ and the benchmark
results under benchmarks/results/ are read with MyST; the gallery runs examples/plot_*.py on the
bundled sample at build time.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from docutils import nodes

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(DOCS))  # _gallery_order

import selconv  # noqa: E402  (after the path insert)

project = "selconv"
author = "the selconv developers"
copyright = "the selconv developers"
release = version = selconv.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 served from the site itself: math renders without internet
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "screenshots", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip"]
templates_path = ["_templates"]

# Every cross-reference must resolve. Names of other libraries that have no inventory here (there is
# no internet at build time) are plain text, not links: see `intersphinx_mapping` below.
nitpicky = True
nitpick_ignore_regex = [
    # numpydoc type descriptions ("array-like of shape (n, d)", "list of ConvMap", "path-like", ...)
    # are parsed word by word; words that name no Python object are descriptions, not references.
    (
        "py:class",
        r"(array-like|array|ndarray|path-like|str|int|float|bool|None|sequence|list|tuple|dict|"
        r"mapping|callable|iterable|object|optional|of|or|shape|default|.*\(.*|.*\).*|\{.*|.*\}|"
        r"[0-9]+|\"?[a-z_0-9-]+\"?|'[a-z_0-9-]+'|.*\.\.\..*)",
    ),
    # Objects of scikit-learn, numpy, torch, PIL, matplotlib and the standard library: no inventory offline.
    (
        "py:(class|func|meth|obj|exc|data|attr|mod)",
        r"(sklearn|numpy|np|torch|PIL|matplotlib|scipy|skops|faiss|dask|pathlib|os|"
        r"collections|typing|json|io|warnings|argparse|dataclasses)(\..*)?",
    ),
    (
        "py:(class|obj|exc)",
        r"(Path|PathLike|Pipeline|BaseEstimator|TransformerMixin|Module|Image|Figure|"
        r"ArgumentParser|Namespace|UserWarning|ValueError|RuntimeError|OSError|TypeError|"
        r"KeyError|Exception|Warning|Mapping|Sequence|Iterable|Callable|Generator|Any|"
        r"GridSearchCV|KMeans|GaussianMixture|NotFittedError|dtype|RandomState|Generator)",
    ),
]
# Implementation helpers that public docstrings mention by name but that are not public API (they are
# absent from their package's __all__); shown as plain names.
nitpick_ignore = [
    ("py:func", "allocate_dimensions"),  # selconv.hashing.kmh
    ("py:func", "revisited_ground_truth"),  # selconv.datasets.revisited
    ("py:data", "DATASET_RESOURCES"),  # selconv.datasets.download
]
# Docstrings write the codebook size as |C| (the paper's notation): text, not an rst substitution.
rst_prolog = r"""
.. |C| replace:: \|C\|
"""
# No network at build time: intersphinx inventories are not fetched.
intersphinx_mapping: dict = {}

# -- autodoc / autosummary / numpydoc --------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False


def _foreign_bases() -> str:
    """Every class outside selconv in the ancestry of the documented modules' classes (scikit-learn's mixins, builtin
    exceptions, object): members inherited from them stay off the pages, while members a public class inherits
    from a selconv base (``fit``/``transform`` of the masks, embeddings, aggregators, hashers, poolings) show."""
    import importlib
    import inspect

    modules = re.findall(r"^\.\. module:: (\S+)$", (DOCS / "api.rst").read_text(), flags=re.M)
    documented = [vars(importlib.import_module(module)).values() for module in modules]
    foreign = {
        base.__name__
        for objects in documented
        for cls in objects
        if inspect.isclass(cls) and cls.__module__.startswith("selconv")
        for base in cls.__mro__
        if not base.__module__.startswith("selconv")
    }
    return ", ".join(sorted(foreign | {"object"}))


autodoc_default_options = {"members": True, "inherited-members": _foreign_bases(), "show-inheritance": True}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_mock_imports: list = []
numpydoc_show_class_members = False  # the class template lists methods itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set = set()

# -- MyST --------------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- sphinx-gallery ----------------------------------------------------------------------------------
# One conv-map cache for every example, so the CNN runs once per image and a rebuild takes seconds.
os.environ.setdefault("SELCONV_CACHE_DIR", str(DOCS / "_build" / "example-cache"))
# Where the examples write files; the HTML report is published beside its gallery page (setup below).
EXAMPLE_OUTPUT = Path(os.environ.setdefault("SELCONV_EXAMPLE_OUTPUT", str(DOCS / "_build" / "example-output")))

sphinx_gallery_conf = {
    "examples_dirs": str(REPO / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "_gallery_order.ReadingOrder",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "capture_repr": (),
    "show_memory": False,
    "min_reported_time": 1,
    "reference_url": {"selconv": None},
    "backreferences_dir": None,
}

# -- HTML --------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"selconv {release}"
html_static_path = ["_static"]
html_css_files = ["selconv.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "secondary_sidebar_items": {"**": ["page-toc"], "index": []},
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "navigation_with_keys": False,
}
html_context = {"default_mode": "light"}
# Pages without sub-pages need no section navigation: the article gets its width.
html_sidebars = {
    "how-it-works": [],
    "api": [],
    "usage": [],
    "datasets": [],
    "extraction": [],
    "architecture": [],
    "robustness": [],
}

# -- links between markdown files that live outside docs/ ------------------------------------------
# docs/*.md link to ../benchmarks/... and ../examples/... so that they read well on a git host too.
# On the site those files are pages of their own (results/*.md include them, the gallery runs the
# examples); these links are rewritten to those pages before MyST resolves them, and any other link
# that leaves docs/ stays unresolved (a warning, hence an error).
OUTSIDE_PAGES = {
    "benchmarks/README.md": "results/benchmark-scripts",
    "benchmarks/results/paper/paper_results.md": "results/paper_results",
    "benchmarks/results/stages.md": "results/stages",
    "benchmarks/results/extraction_cpu.md": "results/extraction_cpu",
    "benchmarks/results/extraction_gpu.md": "results/extraction_gpu",
    "benchmarks/results/gpu_pipeline.md": "results/gpu_pipeline",
    "benchmarks/results/pipeline_profile.md": "results/pipeline_profile",
    "benchmarks/results/agreement_cpu.md": "results/agreement_cpu",
    "benchmarks/results/cache_key.md": "results/cache_key",
    "benchmarks/results/search.md": "results/search",
    "benchmarks/results/index_cpu.md": "results/index_cpu",
    "benchmarks/results/index_gpu.md": "results/index_gpu",
    "benchmarks/results/grid_search.md": "results/grid_search",
    "examples": "auto_examples/index",
    "examples/plot_quickstart.py": "auto_examples/plot_quickstart",
    "examples/plot_grid_search.py": "auto_examples/plot_grid_search",
    "examples/plot_binary_search_index.py": "auto_examples/plot_binary_search_index",
    "examples/plot_gpu_codes.py": "auto_examples/plot_gpu_codes",
    "examples/plot_image_folder.py": "auto_examples/plot_image_folder",
    "examples/plot_html_report.py": "auto_examples/plot_html_report",
}


def _rewrite_outside_links(app, doctree):
    from sphinx import addnodes

    docname = app.env.docname
    source_dir = (DOCS / docname).parent
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst":
            continue
        if node.get("refdomain") == "doc":
            # A link to a .md file: MyST has already made it a document name (suffix dropped),
            # absolute, or relative to docs/.
            path, anchor = node["reftarget"], node.get("reftargetid") or ""
            candidates = [Path(path) if Path(path).is_absolute() else DOCS / path]
            candidates = [c.with_name(c.name + suffix) for c in candidates for suffix in (".md", ".rst")]
        else:
            path, _, anchor = node.get("reftarget", "").partition("#")
            if not path or "://" in path:
                continue
            candidates = [source_dir / path]
        relative = None
        for candidate in candidates:
            try:
                relative = candidate.resolve().relative_to(REPO).as_posix()
            except ValueError:
                continue
            if relative in OUTSIDE_PAGES:
                break
        page = OUTSIDE_PAGES.get(relative) if relative else None
        if page is None:
            continue
        if anchor:  # a page and a section of it: a plain internal link
            uri = app.builder.get_relative_uri(docname, page) + f"#{anchor}"
            reference = nodes.reference("", "", internal=True, refuri=uri)
            reference += node.children
            node.replace_self(reference)
        else:  # a page: a :doc: reference, so that Sphinx checks the page exists
            node["refdomain"], node["reftype"], node["reftarget"] = "std", "doc", "/" + page
            node["refexplicit"] = True


def _escape_fitted_names(app, what, name, obj, options, lines):
    """Keep fitted-attribute names in shapes as text: "(n_features_in_,)" is not an rst reference.

    scikit-learn's docstring convention writes shapes with fitted attributes; in rst a word ending in
    "_" is a hyperlink reference. Runs before numpydoc; lines with inline literals are left alone.
    """
    for i, line in enumerate(lines):
        if "``" not in line:
            lines[i] = _FITTED_IN_SHAPE.sub(r"\1\\_", line)


_FITTED_IN_SHAPE = re.compile(r"(\b[A-Za-z][A-Za-z0-9_]*[A-Za-z0-9])_(?=[,)*]|\s+[-+*/])")


def _public_bases(app, name, obj, options, bases):
    """Show only public base classes ("Bases: BaseHasher", not a private helper class such as the codebook
    embeddings' base in ``selconv.embedding._codebook``): selconv bases must be exported by a package."""
    bases[:] = [base for base in bases if _is_public_base(base)]


def _is_public_base(base) -> bool:
    if getattr(base, "__name__", "_").startswith("_"):
        return False
    module = getattr(base, "__module__", "")
    if not module.startswith("selconv"):
        return True
    package = sys.modules.get(module.rpartition("._")[0] if "._" in module else module)
    return package is not None and base.__name__ in getattr(package, "__all__", ())


def _resolve_short_python_names(app, env, node, contnode):
    """Resolve ``:func:`evaluate``` or ``selconv.ConvMap`` to the one documented object of that name.

    Docstrings name selconv objects briefly, or by the top-level alias; autosummary documents each
    under its public module (``selconv.metrics.evaluate``). A name that matches several documented
    objects, or none, stays unresolved (a warning, hence an error).
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    short = target.rpartition(".")[2]
    if target != short and not target.startswith("selconv."):
        return None
    domain = env.get_domain("py")
    matches = [name for name, entry in domain.objects.items() if name.rpartition(".")[2] == short and not entry.aliased]
    if len(matches) != 1:
        return None
    found = domain.resolve_any_xref(env, node.get("refdoc", env.docname), app.builder, matches[0], node, contnode)
    return found[0][1] if found else None


def _publish_example_report(app, env, docnames):
    """Put the report plot_html_report.py wrote (the gallery has run by now) next to its gallery page.

    Its page links to it: the site needs the file in the output, the link checker beside the page's source.
    """
    report = EXAMPLE_OUTPUT / "report.html"
    if not report.is_file():
        return
    targets = [Path(app.srcdir) / "auto_examples"]
    if app.builder.format == "html":
        targets.append(Path(app.outdir) / "auto_examples")
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report, folder / "report.html")


def setup(app):
    app.connect("env-before-read-docs", _publish_example_report)
    app.connect("autodoc-process-docstring", _escape_fitted_names, priority=100)  # numpydoc: 500
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("missing-reference", _resolve_short_python_names)
    # After a page is read, before MyST resolves its links (a post-transform at write time).
    app.connect("doctree-read", _rewrite_outside_links)
