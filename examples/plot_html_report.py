"""
An HTML report of a retrieval run
=================================

:func:`~selconv.report.write_report` writes one self-contained HTML file: a results table, the
precision-recall curve of every run, and for each query its thumbnail (box drawn) and its top-k
results framed green (positive), yellow (junk) or red (negative), with the query's AP. It is the
report ``selconv demo`` and ``selconv evaluate`` write; here it is built from the library, for runs of
your choice.

The documentation site keeps `the report written when this page was built <report.html>`_.

Run: ``python examples/plot_html_report.py`` (writes ``selconv-output/examples/report.html``).
"""

# %%
# Three runs on the bundled sample
# --------------------------------
import io
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

from selconv.datasets import load_sample
from selconv.evaluation import default_cache_dir
from selconv.extraction import ConvFeatureExtractor
from selconv.metrics import evaluate
from selconv.pipelines import make_paper_pipeline, rotation_settings
from selconv.report import interpolated_precision_recall, plot_precision_recall, write_report

MAX_SIZE = 192 if os.environ.get("SELCONV_EXAMPLE_FAST") == "1" else 384
CACHE_DIR = default_cache_dir()  # $SELCONV_CACHE_DIR or selconv-output/cache: shared with `selconv demo`
OUTPUT = Path(os.environ.get("SELCONV_EXAMPLE_OUTPUT", "selconv-output/examples"))

dataset = load_sample()
extractor = ConvFeatureExtractor(max_size=MAX_SIZE, cache_dir=CACHE_DIR).fit()
train_maps = extractor.transform(dataset.training)
database_maps = extractor.transform(dataset.database_inputs())
query_maps = extractor.transform(dataset.query_inputs())

rotation, note = rotation_settings(len(dataset.training), 512)  # 40 images: the rotation is skipped
print(note)
runs = {
    "MAX-mask, 512 preset": make_paper_pipeline(512, mask="max", **rotation),
    "SUM-mask, 512 preset": make_paper_pipeline(512, mask="sum", **rotation),
    "MAX-mask, 32-bit ITQ": make_paper_pipeline(512, mask="max", n_bits=32, **rotation),
}
rankings, table = {}, []
for name, pipeline in runs.items():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 40 training images: the stages warn
        pipeline.fit(train_maps)
    database = pipeline.transform(database_maps)
    result = evaluate(pipeline.transform(query_maps), database, dataset.ground_truth)
    rankings[name] = result.rankings
    table.append(
        {"run": name, "bytes per image": database.nbytes // len(database), "ranking": result.metric, "mAP": result.map}
    )
    print(f"{name:<22} mAP {result.map:.4f}")

# %%
# The report
# ----------
# ``queries`` takes ``(path, box)`` pairs, so each query's box is drawn on its thumbnail; ``notes``
# say what produced the numbers.
path = write_report(
    OUTPUT / "report.html",
    queries=dataset.query_inputs(),
    database=dataset.database,
    ground_truth=dataset.ground_truth,
    rankings=rankings,
    table=table,
    title="selconv on the bundled sample",
    notes=[
        f"VGG16 pool5, ImageNet weights, longest side {MAX_SIZE} px",
        f"learned on the sample's {len(dataset.training)} generic training photos",
        dataset.summary(),
    ],
    top_k=6,
    max_queries=10,
)
print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")

# %%
# Its precision-recall plot
# -------------------------
# The report embeds this PNG; :func:`~selconv.report.plot_precision_recall` returns it as bytes.
png = plot_precision_recall(
    {name: interpolated_precision_recall(r, dataset.ground_truth) for name, r in rankings.items()},
    title="bundled sample, 25 queries",
)
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.imshow(plt.imread(io.BytesIO(png)))
ax.set_axis_off()
fig.tight_layout()
plt.show()
