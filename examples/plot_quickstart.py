"""
Quickstart: the paper's 512-D descriptor on the bundled sample
===============================================================

Extract VGG16 pool5 conv maps, fit the paper's pipeline (MAX-mask -> local PCA -> triangulation
embedding -> democratic pooling -> rotation -> power normalisation) on the sample's TRAINING images,
describe queries and database, compute the Oxford mAP and look at what the first queries retrieve.

Run: ``python examples/plot_quickstart.py`` (a few minutes on a laptop CPU; conv maps are cached).
"""

# %%
# Settings
# --------
# The paper resizes to 1024 px; the sample's photos are at most 512 px and this page is built on a
# small CPU, so the images are read at 384 px. ``SELCONV_EXAMPLE_FAST=1`` (set by the test suite)
# shrinks them further. ``cache_dir``: a second run reads the conv maps from disk instead of
# recomputing them; every example of this gallery shares the one cache.
import os
import warnings

import matplotlib.pyplot as plt
from PIL import Image

from selconv.datasets import load_sample
from selconv.evaluation import default_cache_dir
from selconv.extraction import ConvFeatureExtractor
from selconv.metrics import evaluate
from selconv.pipelines import make_paper_pipeline, rotation_settings

MAX_SIZE = 192 if os.environ.get("SELCONV_EXAMPLE_FAST") == "1" else 384
CACHE_DIR = default_cache_dir()  # $SELCONV_CACHE_DIR or selconv-output/cache: shared with `selconv demo`

dataset = load_sample()
print(dataset.summary())

# %%
# Conv maps
# ---------
# One :class:`~selconv.ConvMap` per image. Queries with a box are cropped to it (the crop is scaled
# by the factor of the full image).
extractor = ConvFeatureExtractor(max_size=MAX_SIZE, cache_dir=CACHE_DIR).fit()
train_maps = extractor.transform(dataset.training)
database_maps = extractor.transform(dataset.database_inputs())
query_maps = extractor.transform(dataset.query_inputs())  # queries with a box are cropped to it
print(f"database map of image 0: {database_maps[0].features.shape} (K, H, W)")

# %%
# Fit the paper's pipeline and evaluate
# -------------------------------------
# 40 training images determine 39 of the 640 directions of the rotation (RN); the paper learns on
# 5,000+. rotation_settings skips the rotation for so few images (the note says so).
rotation, note = rotation_settings(len(dataset.training), 512)
print(note)
pipeline = make_paper_pipeline(512, mask="max", **rotation)  # paper Table 4: d = 32, |C| = 20
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # ITQ-free here; stages warn about the tiny learning set
    pipeline.fit(train_maps)

result = evaluate(pipeline.transform(query_maps), pipeline.transform(database_maps), dataset.ground_truth)
print(f"mAP of {len(dataset.queries)} queries with 512-D MAX-mask descriptors: {result.map:.4f}")
# The query itself is in the database, as junk for itself (Oxford/Holidays practice): skip junk.
junk = set(dataset.ground_truth[0]["junk"].tolist())
best = next(i for i in result.rankings[0] if i not in junk)
verdict = "a positive" if best in dataset.ground_truth[0]["positives"] else "a negative"
print(f"best match of query {dataset.queries[0].name}: {dataset.database[best].name} ({verdict})")

# %%
# What the queries retrieve
# -------------------------
# Each row: a query (its box in yellow), then its five best database images with junk (the query
# itself) left out, framed green when they show the same landmark and red when they do not.
COLOURS = {True: "#2e9d3a", False: "#d0312d"}
shown_queries = [0, 5, 10, 15]
fig, axes = plt.subplots(len(shown_queries), 6, figsize=(12, 2.2 * len(shown_queries)))
for row, q in zip(axes, shown_queries):
    truth = dataset.ground_truth[q]
    row[0].imshow(Image.open(dataset.queries[q]))
    box = dataset.query_boxes[q]
    if box is not None:
        x1, y1, x2, y2 = box
        row[0].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#e0b400", linewidth=2))
    row[0].set_title(f"query {q}, AP {result.average_precisions[q]:.2f}", fontsize=9)
    ranked = [i for i in result.rankings[q] if i not in set(truth["junk"].tolist())][:5]
    for rank, (ax, i) in enumerate(zip(row[1:], ranked), start=1):
        ax.imshow(Image.open(dataset.database[i]))
        ax.set_title(f"#{rank}", fontsize=9)
        for spine in ax.spines.values():
            spine.set_edgecolor(COLOURS[bool(i in truth["positives"])])
            spine.set_linewidth(4)
    for ax in row:
        ax.set_xticks([])
        ax.set_yticks([])
fig.suptitle("512-D MAX-mask descriptors: top 5 per query (green: same landmark)")
fig.tight_layout()
plt.show()
