"""
Your own image folder: a CSV ground truth, three masks, precision-recall
========================================================================

Retrieval on photos of your own: put them in a folder (subfolders are fine), write a small CSV that
says which images show the same object or place (``image,label`` plus optional ``query`` and box
columns; format in :doc:`/datasets`), load both with :func:`~selconv.datasets.load_image_folder`, and
compare the paper's masks by their precision-recall curves.

Here "your photos" are the bundled sample's folder of Oxford photos, so the example runs anywhere and
reuses the conv maps the other examples cached.

Run: ``python examples/plot_image_folder.py`` (writes ``selconv-output/examples/my_groundtruth.csv``).
"""

# %%
# A folder of photos and the ground truth you write for it
# --------------------------------------------------------
import csv
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from selconv.datasets import SAMPLE_ROOT, load_image_folder
from selconv.evaluation import default_cache_dir
from selconv.extraction import ConvFeatureExtractor
from selconv.metrics import evaluate
from selconv.pipelines import make_paper_pipeline, rotation_settings
from selconv.report import interpolated_precision_recall

MAX_SIZE = 192 if os.environ.get("SELCONV_EXAMPLE_FAST") == "1" else 384
CACHE_DIR = default_cache_dir()  # $SELCONV_CACHE_DIR or selconv-output/cache: shared with `selconv demo`
OUTPUT = Path(os.environ.get("SELCONV_EXAMPLE_OUTPUT", "selconv-output/examples"))

photos = SAMPLE_ROOT / "images"  # your folder of photos
print(sorted(p.name for p in photos.glob("*.jpg"))[:6], "...")

# Images that share a label are relevant to each other. Every labelled image is a query here
# (leave-one-out); one is restricted to a box ``x1,y1,x2,y2`` in pixels. Images of the folder that the
# file does not list join the database as distractors. Paths are relative to the folder.
places = {
    "all_souls": [
        "all_souls_000006.jpg",
        "all_souls_000040.jpg",
        "all_souls_000055.jpg",
        "oxford_002503.jpg",
        "oxford_002985.jpg",
    ],
    "ashmolean": [
        "ashmolean_000005.jpg",
        "ashmolean_000016.jpg",
        "ashmolean_000079.jpg",
        "ashmolean_000305.jpg",
        "oxford_001964.jpg",
    ],
    "christ_church": [
        "christ_church_000179.jpg",
        "christ_church_000311.jpg",
        "christ_church_000376.jpg",
        "christ_church_000395.jpg",
        "oxford_002562.jpg",
    ],
}
boxes = {"ashmolean_000305.jpg": (182.0, 84.5, 348.5, 195.5)}
OUTPUT.mkdir(parents=True, exist_ok=True)
ground_truth = OUTPUT / "my_groundtruth.csv"
with open(ground_truth, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["image", "label", "query", "x1", "y1", "x2", "y2"])
    for label, images in places.items():
        for image in images:
            writer.writerow([image, label, 1, *boxes.get(image, ("",) * 4)])
print(ground_truth.read_text())

# The training set: any folder of images (here the sample's 40 generic photos). A training folder
# inside the photo folder is kept out of the database.
dataset = load_image_folder(photos, ground_truth, training=SAMPLE_ROOT / "training", name="my photos")
print(dataset.summary())

# %%
# Conv maps, three pipelines, one evaluation each
# -----------------------------------------------
extractor = ConvFeatureExtractor(max_size=MAX_SIZE, cache_dir=CACHE_DIR).fit()
train_maps = extractor.transform(dataset.training)
database_maps = extractor.transform(dataset.database_inputs())
query_maps = extractor.transform(dataset.query_inputs())

names = {"max": "MAX-mask", "sum": "SUM-mask", "none": "no mask"}
results = {}
rotation, note = rotation_settings(len(train_maps), 512)  # too few learning images: no rotation
print(note)
for mask in names:
    pipeline = make_paper_pipeline(512, mask=mask, **rotation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 40 training images: the stages warn
        pipeline.fit(train_maps)
    results[mask] = evaluate(pipeline.transform(query_maps), pipeline.transform(database_maps), dataset.ground_truth)
    print(f"{names[mask]:<9} mAP {results[mask].map:.4f}")

# %%
# Precision-recall
# ----------------
# Interpolated precision at each recall level, averaged over the queries, junk (each query itself)
# removed from the ranking: the curve the HTML report draws.
recall = np.linspace(0.0, 1.0, 101)
fig, ax = plt.subplots(figsize=(6, 4.5))
for mask, result in results.items():
    precision = interpolated_precision_recall(result.rankings, dataset.ground_truth, recall)
    ax.plot(recall, precision, label=f"{names[mask]}, mAP {result.map:.3f}")
ax.set_xlabel("recall")
ax.set_ylabel("precision (interpolated, mean over queries)")
ax.set_xlim(0, 1)
ax.set_ylim(0, 1.02)
ax.set_title(f"{dataset.name}: {len(dataset.queries)} queries, {len(dataset.database)} images, 512-D")
ax.legend(loc="lower left")
fig.tight_layout()
plt.show()
