"""
Your own image folder: a CSV ground truth, three masks, precision-recall
========================================================================

Retrieval on photos of your own: sort them into one folder per object or place, write a small
``groundtruth.csv`` (``image,label`` plus optional ``query`` and box columns; format in
:doc:`/datasets`), load it with :func:`~selconv.datasets.load_image_folder`, and compare the
paper's masks by their precision-recall curves.

Here "your photos" are copies of the bundled sample's landmark photos, so the example runs anywhere.

Run: ``python examples/plot_image_folder.py`` (writes ``selconv-output/examples/my_photos/``).
"""

# %%
# A folder of photos, one subfolder per place
# -------------------------------------------
import csv
import os
import shutil
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from selconv.datasets import load_image_folder, load_sample
from selconv.extraction import ConvFeatureExtractor
from selconv.metrics import evaluate
from selconv.pipelines import make_paper_pipeline
from selconv.report import interpolated_precision_recall

FAST = os.environ.get("SELCONV_EXAMPLE_FAST") == "1"
MAX_SIZE = 192 if FAST else 384
CACHE_DIR = os.environ.get("SELCONV_EXAMPLE_CACHE", "selconv-example-cache")
OUTPUT = Path(os.environ.get("SELCONV_EXAMPLE_OUTPUT", "selconv-output/examples"))

sample = load_sample()
photos = OUTPUT / "my_photos"
for image, label in zip(sample.database, sample.database_labels):
    folder = photos / (label or "other")  # unlabelled photos: distractors
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / image.name).exists():
        shutil.copy2(image, folder / image.name)

# %%
# The ground-truth file
# ---------------------
# Images that share a label are relevant to each other; every labelled image is a query here
# (leave-one-out), one of them restricted to a box ``x1,y1,x2,y2`` in pixels. Images the file does not
# list (the ``other/`` folder) join the database as distractors.
boxes = {"ashmolean/ashmolean_000305.jpg": (182.0, 84.5, 348.5, 195.5)}
with open(photos / "groundtruth.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["image", "label", "query", "x1", "y1", "x2", "y2"])
    for folder in sorted(p for p in photos.iterdir() if p.is_dir() and p.name != "other"):
        for image in sorted(folder.glob("*.jpg")):
            name = f"{folder.name}/{image.name}"
            writer.writerow([name, folder.name, 1, *boxes.get(name, ("",) * 4)])
print((photos / "groundtruth.csv").read_text().splitlines()[:4])

# The sample's 40 generic photos are the training set (any folder of images will do; it may lie
# inside ``photos``, and is then kept out of the database).
dataset = load_image_folder(photos, training=sample.root / "training")
print(dataset.summary())

# %%
# Conv maps, three pipelines, one evaluation each
# -----------------------------------------------
extractor = ConvFeatureExtractor(max_size=MAX_SIZE, cache_dir=CACHE_DIR).fit()
train_maps = extractor.transform(dataset.training)
database_maps = extractor.transform(dataset.database_inputs())
query_maps = extractor.transform(dataset.query_inputs())

results = {}
for mask in ("max", "sum", "none"):
    pipeline = make_paper_pipeline(512, mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 40 training images: the rotation step warns
        pipeline.fit(train_maps)
    results[mask] = evaluate(pipeline.transform(query_maps), pipeline.transform(database_maps), dataset.ground_truth)
    print(f"{mask:>4} mask: mAP {results[mask].map:.4f}")

# %%
# Precision-recall
# ----------------
# Interpolated precision at each recall level, averaged over the queries, junk (each query itself)
# removed from the ranking: the curve the HTML report draws.
recall = np.linspace(0.0, 1.0, 101)
fig, ax = plt.subplots(figsize=(6, 4.5))
for mask, result in results.items():
    precision = interpolated_precision_recall(result.rankings, dataset.ground_truth, recall)
    ax.plot(recall, precision, label=f"{mask.upper()}-mask, mAP {result.map:.3f}")
ax.set_xlabel("recall")
ax.set_ylabel("precision (interpolated, mean over queries)")
ax.set_xlim(0, 1)
ax.set_ylim(0, 1.02)
ax.set_title(f"{dataset.name}: {len(dataset.queries)} queries, {len(dataset.database)} images, 512-D")
ax.legend(loc="lower left")
fig.tight_layout()
plt.show()
