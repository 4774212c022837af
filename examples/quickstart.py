"""Quickstart: the paper's 512-D descriptor on the bundled sample, in a dozen lines.

Extract VGG16 pool5 conv maps, fit the paper's pipeline (MAX-mask -> local PCA -> triangulation
embedding -> democratic pooling -> rotation -> power normalisation) on the sample's TRAINING images,
describe queries and database, and compute the Oxford mAP.

Run:  python examples/quickstart.py     (a few minutes on a laptop CPU; conv maps are cached)
"""

import warnings

from selconv.datasets import load_sample
from selconv.extraction import ConvFeatureExtractor
from selconv.metrics import evaluate
from selconv.pipelines import make_paper_pipeline

dataset = load_sample()
print(dataset.summary())

# The paper resizes to 1024 px; the sample's photos are at most 512 px, which keeps this quick.
# cache_dir: a second run reads the conv maps from disk instead of recomputing them.
extractor = ConvFeatureExtractor(max_size=512, cache_dir="selconv-example-cache", progress=True).fit()
train_maps = extractor.transform(dataset.training)
database_maps = extractor.transform(dataset.database_inputs())
query_maps = extractor.transform(dataset.query_inputs())  # queries with a box are cropped to it

pipeline = make_paper_pipeline(512, mask="max")  # paper Table 4: d = 32, |C| = 20, D = 512
with warnings.catch_warnings():
    # 40 training images are far fewer than the paper's 5,000: the rotation step warns about it.
    warnings.simplefilter("ignore", UserWarning)
    pipeline.fit(train_maps)

result = evaluate(pipeline.transform(query_maps), pipeline.transform(database_maps), dataset.ground_truth)
print(f"mAP of {len(dataset.queries)} queries with 512-D MAX-mask descriptors: {result.map:.4f}")
# The query itself is in the database, as junk for itself (Oxford/Holidays practice): skip junk.
junk = set(dataset.ground_truth[0]["junk"].tolist())
best = next(i for i in result.rankings[0] if i not in junk)
verdict = "a positive" if best in dataset.ground_truth[0]["positives"] else "a negative"
print(f"best match of query {dataset.queries[0].name}: {dataset.database[best].name} ({verdict})")
