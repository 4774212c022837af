"""
Compact binary codes and a search index
=======================================

Descriptors -> ITQ codes -> a saved faiss index searched by Hamming distance, and how mAP grows with
the code length.

The paper hashes its 512-D descriptor with ITQ (64..512 bits; Table 10). ITQ learns fewer bits than
it has training images, and the bundled sample has 40, so this example uses 32 bits (4 bytes per
image) and plots 8 to 32 bits. With your own training set (thousands of images), pass n_bits=64,
128, 256 or 512.

Run: ``python examples/plot_binary_search_index.py`` (conv maps cached in
``selconv-output/cache/``, shared with ``selconv demo``).
"""

# %%
# Conv maps of the sample (384 px here; ``SELCONV_EXAMPLE_FAST=1``, set by the test suite, shrinks
# them; every example of the gallery shares one conv-map cache).
import os
import warnings

import matplotlib.pyplot as plt

from selconv.datasets import load_sample
from selconv.evaluation import default_cache_dir
from selconv.extraction import ConvFeatureExtractor
from selconv.hashing import ITQHasher
from selconv.index import ImageIndex, load_index
from selconv.metrics import evaluate
from selconv.pipelines import make_paper_pipeline, rotation_settings

MAX_SIZE = 192 if os.environ.get("SELCONV_EXAMPLE_FAST") == "1" else 384
CACHE_DIR = default_cache_dir()  # $SELCONV_CACHE_DIR or selconv-output/cache: shared with `selconv demo`

dataset = load_sample()
extractor = ConvFeatureExtractor(max_size=MAX_SIZE, cache_dir=CACHE_DIR).fit()
train_maps = extractor.transform(dataset.training)
database_maps = extractor.transform(dataset.database_inputs())
query_maps = extractor.transform(dataset.query_inputs())

# %%
# Real-valued and binary pipelines
# --------------------------------
n_bits = 32
rotation, note = rotation_settings(len(dataset.training), 512)  # 40 images: the rotation is skipped
print(note)
real = make_paper_pipeline(512, mask="max", **rotation)
binary = make_paper_pipeline(512, mask="max", n_bits=n_bits, **rotation)  # the same pipeline + an "itq" step
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # 40 training images: far fewer than the paper's
    real.fit(train_maps)
    binary.fit(train_maps)

database_codes = binary.transform(database_maps)  # (45, 4) uint8: packed bits, faiss binary layout
query_codes = binary.transform(query_maps)
print(f"codes: {database_codes.shape} {database_codes.dtype} = {database_codes.nbytes} bytes for the database")

# %%
# A saved index, searched top-k
# -----------------------------
# :class:`~selconv.index.ImageIndex` encodes conv maps (or images) with the fitted pipeline and
# stores the codes in a faiss binary index (Hamming distance; float descriptors would be ranked by
# inner product). It saves to a folder that loads without running code from the files.
index = ImageIndex(binary)
index.add(database_maps)  # ids 0..44, the paths taken from the maps' sources
index.save(os.path.join(CACHE_DIR, "example-index"))
index = load_index(os.path.join(CACHE_DIR, "example-index"))
result = index.search(query_maps[:3], k=5)  # scores are negated Hamming distances
for q in range(3):
    names = [dataset.database[i].name for i in result.ids[q]]
    print(
        f"query {dataset.queries[q].name}: "
        + ", ".join(f"{n} ({-s:.0f} bits)" for n, s in zip(names, result.scores[q]))
    )

# mAP of the real-valued descriptors (inner product) and of the codes (Hamming).
for name, pipeline in (("float32", real), (f"{n_bits}-bit ITQ", binary)):
    result = evaluate(pipeline.transform(query_maps), pipeline.transform(database_maps), dataset.ground_truth)
    print(f"mAP {name}: {result.map:.4f}")

# %%
# mAP against the code length
# ---------------------------
# ITQ on the real pipeline's training descriptors, one hasher per length; 40 training images allow
# at most 39 bits. The real-valued mAP is the ceiling.
train_descriptors = real.transform(train_maps)
query_descriptors = real.transform(query_maps)
database_descriptors = real.transform(database_maps)
real_map = evaluate(query_descriptors, database_descriptors, dataset.ground_truth).map
bit_lengths = [8, 16, 24, 32]
maps = []
for bits in bit_lengths:
    hasher = ITQHasher(n_bits=bits, random_state=0).fit(train_descriptors)
    codes = evaluate(hasher.transform(query_descriptors), hasher.transform(database_descriptors), dataset.ground_truth)
    maps.append(codes.map)
    print(f"{bits:>3} bits ({bits // 8} bytes): mAP {codes.map:.4f}")

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(bit_lengths, maps, "o-", label="ITQ codes (Hamming ranking)")
ax.axhline(real_map, color="grey", linestyle="--", label="float32 descriptors (inner product)")
ax.set_xlabel("bits per image")
ax.set_ylabel("mAP")
ax.set_xticks(bit_lengths)
ax.set_ylim(0, 1)
ax.set_title(f"Bundled sample, {len(dataset.queries)} queries, MAX-mask + ITQ")
ax.legend(loc="lower right")
fig.tight_layout()
plt.show()
