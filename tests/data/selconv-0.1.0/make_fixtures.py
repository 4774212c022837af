"""How the fixtures of tests/test_renamed_types.py were written: run with selconv 0.1.0 (main at 1930ed2).

    PYTHONPATH=<selconv 0.1.0>/src python tests/data/selconv-0.1.0/make_fixtures.py tests/data/selconv-0.1.0

It imports 0.1.0's module paths (selconv.baselines.GeM, selconv.local, ...), which no longer exist.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conftest import make_conv_maps, make_local_sets  # noqa: E402

import selconv  # noqa: E402
from selconv.baselines import GeM, PCAWhitening  # noqa: E402
from selconv.embedding import TriangulationEmbedding  # noqa: E402
from selconv.encoding import EncodeAggregate  # noqa: E402
from selconv.hashing import RelaxedBinaryAutoencoder  # noqa: E402
from selconv.local import LocalPCA  # noqa: E402
from selconv.postprocessing import PowerNormalizer, RotationNormalizer  # noqa: E402

assert selconv.__version__ == "0.1.0"
out = sys.argv[1]
maps = make_conv_maps(n_images=24, n_channels=16, random_state=1)
pooled = Pipeline(
    [
        ("pooling", GeM()),
        ("whitening", PCAWhitening(12, shrinkage=0.1)),
        ("rba", RelaxedBinaryAutoencoder(8, n_iter=2, max_lbfgs_iter=5, random_state=0)),
    ]
).fit(maps)
sets = make_local_sets(counts=(40, 0, 23, 31, 15, 9, 30, 12), n_features=16, random_state=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    local = Pipeline(
        [
            ("pca", LocalPCA(4, random_state=0)),
            ("encode", EncodeAggregate(TriangulationEmbedding(3, n_clamped=3, random_state=0))),
            ("rotate", RotationNormalizer(n_dropped=0, undetermined="center")),
            ("power", PowerNormalizer()),
        ]
    ).fit(sets)
    local_out = local.transform(sets)
for name, model in [("pooled", pooled), ("local", local)]:
    with open(f"{out}/{name}.skops", "wb") as f:
        f.write(sio.dumps(model))
np.savez(f"{out}/expected.npz", pooled=pooled.transform(maps), local=local_out)
