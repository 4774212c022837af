"""Compact binary codes and a search index: 512-D descriptors -> ITQ codes -> Hamming top-k search, saved and loaded.

The paper hashes its 512-D descriptor with ITQ (64..512 bits; Table 10). ITQ learns at most as many
bits as it has training images, and the bundled sample has 40, so this example uses 32 bits (4 bytes
per image). With your own training set (thousands of images), pass n_bits=64, 128, 256 or 512.

Run:  python examples/binary_search_index.py     (conv maps cached in selconv-example-cache/)
"""

import warnings

import numpy as np

from selconv.datasets import load_sample
from selconv.extraction import ConvFeatureExtractor
from selconv.metrics import evaluate
from selconv.pipelines import make_paper_pipeline
from selconv.index import ImageIndex, load_index

dataset = load_sample()
extractor = ConvFeatureExtractor(max_size=512, cache_dir="selconv-example-cache", progress=True).fit()
train_maps = extractor.transform(dataset.training)
database_maps = extractor.transform(dataset.database_inputs())
query_maps = extractor.transform(dataset.query_inputs())

n_bits = 32
real = make_paper_pipeline(512, mask="max")
binary = make_paper_pipeline(512, mask="max", n_bits=n_bits)  # the same pipeline + an "itq" step
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # 40 training images: far fewer than the paper's
    real.fit(train_maps)
    binary.fit(train_maps)

database_codes = binary.transform(database_maps)  # (45, 4) uint8: packed bits, faiss binary layout
query_codes = binary.transform(query_maps)
print(f"codes: {database_codes.shape} {database_codes.dtype} = {database_codes.nbytes} bytes for the database")

# An index of the database: the fitted pipeline encodes the conv maps, faiss IndexBinaryFlat searches the codes.
index = ImageIndex(binary)
index.add(database_maps)  # ids 0..44; the paths come from the maps' sources
index.save("selconv-example-index")  # a folder: manifest.json, index.faiss, ids.npy, paths.jsonl, encoder.skops
index = load_index("selconv-example-index")  # runs no code from the files
result = index.search(query_maps[:3], k=5)  # scores are negated Hamming distances
for q in range(3):
    names = [dataset.database[i].name for i in result.ids[q]]
    print(f"query {dataset.queries[q].name}: " + ", ".join(f"{n} ({-s:.0f} bits)" for n, s in zip(names, result.scores[q])))

# The same search on the real-valued descriptors (inner product), and the mAP of both.
flat = ImageIndex()
flat.add_descriptors(real.transform(database_maps))
print("top-3 inner products of query 0:", np.round(flat.search_descriptors(real.transform(query_maps[:1]), k=3).scores[0], 3))
for name, pipeline in (("512-D float32", real), (f"{n_bits}-bit ITQ", binary)):
    result = evaluate(pipeline.transform(query_maps), pipeline.transform(database_maps), dataset.ground_truth)
    print(f"mAP {name}: {result.map:.4f}")
