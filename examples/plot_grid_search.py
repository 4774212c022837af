"""
Grid search over the mask, the codebook size and the power-law exponent, scored by mAP
======================================================================================

Every stage is a scikit-learn estimator, so the whole pipeline plugs into GridSearchCV. The mAP scorer
treats images that share a label as relevant to each other and images labelled -1 as distractors.
Conv maps are extracted once (the pipeline starts at conv maps) and every candidate reuses them.

Run: ``python examples/plot_grid_search.py`` (conv maps cached in ``selconv-example-cache/``).
"""

# %%
# Conv maps of the sample (384 px here; ``SELCONV_EXAMPLE_FAST=1``, set by the test suite, shrinks
# them; every example of the gallery shares one conv-map cache).
import os
import warnings

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from selconv.datasets import load_sample
from selconv.extraction import ConvFeatureExtractor
from selconv.masks import MaxMask, NoMask, SumMask
from selconv.metrics import map_scorer
from selconv.pipelines import make_paper_pipeline

MAX_SIZE = 192 if os.environ.get("SELCONV_EXAMPLE_FAST") == "1" else 384
CACHE_DIR = os.environ.get("SELCONV_EXAMPLE_CACHE", "selconv-example-cache")

dataset = load_sample()
extractor = ConvFeatureExtractor(max_size=MAX_SIZE, cache_dir=CACHE_DIR).fit()

# %%
# Labels for the scorer
# ---------------------

# Labelled landmark photos (5 landmarks x 5) + unlabelled photos (distractors, label -1). The generic
# training photos join as distractors: more data to fit on, more confusers to rank.
landmarks = sorted({label for label in dataset.database_labels if label is not None})
labels = [landmarks.index(label) if label is not None else -1 for label in dataset.database_labels]
maps = extractor.transform(dataset.database_inputs() + dataset.training)
y = np.array(labels + [-1] * len(dataset.training))

# %%
# The grid
# --------
grid = {
    "mask": [MaxMask(), SumMask(), NoMask()],
    "embed__n_clusters": [10, 20],
    "power__alpha": [0.5, 1.0],
}
# Stratified folds keep members of every landmark on both sides, so each test fold has queries.
search = GridSearchCV(make_paper_pipeline(512), grid, scoring=map_scorer,
                      cv=StratifiedKFold(2, shuffle=True, random_state=0), n_jobs=2)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # tiny training folds: the rotation step warns
    search.fit(maps, y)

# %%
# Candidates, best first
# ----------------------
order = np.argsort(-search.cv_results_["mean_test_score"])
print(f"{'mask':<10} {'|C|':>4} {'alpha':>6}  mean mAP over 2 folds")
for i in order:
    params = search.cv_results_["params"][i]
    print(f"{type(params['mask']).__name__:<10} {params['embed__n_clusters']:>4} {params['power__alpha']:>6}  "
          f"{search.cv_results_['mean_test_score'][i]:.4f}")
print("best:", search.best_params_)
