"""
Grid search over the mask, the codebook size and the power-law exponent, scored by mAP
======================================================================================

Every stage is a scikit-learn estimator, so the whole pipeline plugs into GridSearchCV. The mAP scorer
treats images that share a label as relevant to each other and images labelled -1 as distractors.
:class:`~selconv.model_selection.RetrievalKFold` gives each fold what a retrieval protocol needs: it
learns on the images labelled ``LEARNING_LABEL`` (here the sample's 40 generic photos) plus the
landmarks of the other folds, and scores whole landmarks (each photo a query against the others and
the distractors). Conv maps are extracted once and every candidate reuses them.

Run: ``python examples/plot_grid_search.py`` (conv maps cached in
``selconv-output/cache/``, shared with ``selconv demo``).
"""

# %%
# Conv maps of the sample (384 px here; ``SELCONV_EXAMPLE_FAST=1``, set by the test suite, shrinks
# them; every example of the gallery shares one conv-map cache).
import os

import numpy as np
from sklearn.model_selection import GridSearchCV

from selconv.datasets import load_sample
from selconv.evaluation import default_cache_dir
from selconv.extraction import ConvFeatureExtractor
from selconv.masks import MaxMask, NoMask, SumMask
from selconv.model_selection import LEARNING_LABEL, RetrievalKFold, map_scorer
from selconv.pipelines import make_paper_pipeline, rotation_settings

MAX_SIZE = 192 if os.environ.get("SELCONV_EXAMPLE_FAST") == "1" else 384
CACHE_DIR = default_cache_dir()  # $SELCONV_CACHE_DIR or selconv-output/cache: shared with `selconv demo`

dataset = load_sample()
extractor = ConvFeatureExtractor(max_size=MAX_SIZE, cache_dir=CACHE_DIR).fit()

# %%
# Labels for the scorer
# ---------------------

# Labelled landmark photos (5 landmarks x 5), unlabelled photos (distractors, label -1) and the
# generic photos to learn from (LEARNING_LABEL: fitted on, never scored).
landmarks = sorted({label for label in dataset.database_labels if label is not None})
labels = [landmarks.index(label) if label is not None else -1 for label in dataset.database_labels]
maps = extractor.transform(dataset.training + dataset.database_inputs())
y = np.array([LEARNING_LABEL] * len(dataset.training) + labels)

# %%
# The grid
# --------
# Each fold learns on 40 + 20 images: far too few to determine the 640-D rotation (RN), which is
# then skipped (``rotation_settings`` says so) rather than completed arbitrarily.
rotation, note = rotation_settings(len(dataset.training) + 20, 512)
print(note)
grid = {
    "mask": [MaxMask(), SumMask(), NoMask()],
    "encode__embedding__n_clusters": [10, 20],
    "power__alpha": [0.5, 1.0],
}
# One landmark per fold: every test fold has queries and positives.
search = GridSearchCV(
    make_paper_pipeline(512, **rotation), grid, scoring=map_scorer, cv=RetrievalKFold(5), n_jobs=2, refit=False
)
search.fit(maps, y)

# %%
# Candidates, best first
# ----------------------
order = np.argsort(-search.cv_results_["mean_test_score"])
print(f"{'mask':<10} {'|C|':>4} {'alpha':>6}  mean mAP over 5 folds (+- standard deviation)")
for i in order:
    params = search.cv_results_["params"][i]
    print(
        f"{type(params['mask']).__name__:<10} {params['encode__embedding__n_clusters']:>4} "
        f"{params['power__alpha']:>6}  "
        f"{search.cv_results_['mean_test_score'][i]:.4f} +- {search.cv_results_['std_test_score'][i]:.4f}"
    )

# %%
# Is the best candidate really better?
# ------------------------------------
# Five folds of one landmark each give noisy scores. Compare the best candidate with the runner-up fold
# by fold (the same queries): their difference must exceed two standard errors to count.
folds = np.array([search.cv_results_[f"split{k}_test_score"] for k in range(search.n_splits_)])
best, second = order[0], order[1]
differences = folds[:, best] - folds[:, second]
standard_error = differences.std(ddof=1) / np.sqrt(len(differences))
verdict = "beats" if differences.mean() > 2 * standard_error else "ties with (difference within two standard errors of)"
print(
    f"best {search.cv_results_['params'][best]} {verdict} the runner-up "
    f"{search.cv_results_['params'][second]}: mAP difference {differences.mean():+.4f} "
    f"(standard error {standard_error:.4f})"
)
