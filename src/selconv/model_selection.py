"""Cross-validation for retrieval: learn on unlabelled images, score a retrieval protocol on labelled ones.

:func:`make_map_scorer` / :data:`map_scorer` give GridSearchCV its ``scoring=``: the mAP of the fitted
estimator's descriptors where images sharing a label are relevant to each other.

A retrieval pipeline is fitted without labels (local PCA, codebook, whitening, rotation and hashing
are all unsupervised) and scored by mAP, where images sharing a label are relevant to each other.
scikit-learn's splitters know neither side of that, so ``GridSearchCV(pipe, grid, scoring=map_scorer,
cv=KFold(...))`` learns on a handful of labelled images per fold and scores queries against a
fraction of their positives. The splitters here give each fold:

- a *learning* part (``fit``): every image marked ``LEARNING_LABEL`` in ``y`` (e.g. a few hundred
  generic photos, as the paper learns Oxford's parameters on Paris6k), plus, for
  :class:`RetrievalKFold`, the labelled images of the other folds (held-out groups, labels unused);
- a *test* part (``scoring``): whole label groups, each image a query against the others and the
  distractors (``DISTRACTOR_LABEL``), exactly what :data:`map_scorer` computes.

``refit=True`` then fits the chosen settings on every image of X (learning and labelled images):
the model to use on new collections. Its score on X itself would be transductive; report
``best_score_`` (the cross-validated mAP) instead.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.model_selection import GroupKFold

from selconv._compat import BaseCrossValidator
from selconv.metrics import _tie_aware_average_precision_rows
from selconv.search import resolve_metric, similarities

__all__ = [
    "DISTRACTOR_LABEL",
    "LEARNING_LABEL",
    "LearningSetSplit",
    "RetrievalKFold",
    "make_map_scorer",
    "map_scorer",
]

DISTRACTOR_LABEL = -1
"""Label of images that are only database members (never queries, never relevant) in :data:`map_scorer`
and the splitters. ``None`` labels are distractors too."""

LEARNING_LABEL = -2
"""Label of images used only to learn the pipeline's parameters (never scored) in :mod:`selconv.model_selection`."""


def _roles(y, learning_label, distractor_label):
    """(learning mask, distractor mask, labels) of y, with a clear error when y is missing or 2-D."""
    if y is None:
        raise ValueError(
            "the retrieval splitters need labels y: LEARNING_LABEL for learning images, DISTRACTOR_LABEL for "
            "distractors, and a label shared by the images of each object or place."
        )
    labels = np.asarray(y)
    if labels.ndim != 1:
        labels = np.asarray(list(y), dtype=object)
    learning = np.array([label == learning_label for label in labels], dtype=bool)
    distractor = np.array([label is None or label == distractor_label for label in labels], dtype=bool)
    return learning, distractor, labels


class LearningSetSplit(BaseCrossValidator):
    """One split: learn on the images labelled ``learning_label``, score every other image.

    The predefined protocol of the paper: parameters learned on a held-out set (e.g. Paris6k or a
    folder of generic photos), mAP measured on the labelled collection and its distractors.

    Parameters
    ----------
    learning_label : object, default=LEARNING_LABEL (-2)
        Label of the learning images in ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.model_selection import LEARNING_LABEL, LearningSetSplit
    >>> y = np.array([LEARNING_LABEL] * 3 + [0, 0, 1, 1, -1])
    >>> [(train.tolist(), test.tolist()) for train, test in LearningSetSplit().split(np.zeros(8), y)]
    [([0, 1, 2], [3, 4, 5, 6, 7])]
    """

    def __init__(self, *, learning_label=LEARNING_LABEL):
        self.learning_label = learning_label

    def get_n_splits(self, X=None, y=None, groups=None):
        """Returns 1."""
        return 1

    def split(self, X, y=None, groups=None):
        """Yield the learning images' indices and the other images' indices.

        Parameters
        ----------
        X : sequence of length n_samples
        y : array-like of shape (n_samples,)
            Labels; ``learning_label`` marks the learning images.
        groups : None
            Ignored.

        Yields
        ------
        train, test : ndarray of int
        """
        learning, _, _ = _roles(y, self.learning_label, None)
        if not learning.any():
            raise ValueError(f"LearningSetSplit: no image of y has the learning label {self.learning_label!r}.")
        if learning.all():
            raise ValueError("LearningSetSplit: every image is a learning image; nothing is left to score.")
        yield np.flatnonzero(learning), np.flatnonzero(~learning)


class RetrievalKFold(BaseCrossValidator):
    """Group-aware k-fold for retrieval: each label's images in one test fold, learning on the rest.

    Every label group (the images of one object or place) lands in exactly one test fold; the
    distractors are spread over the folds. Each fold learns on the fixed learning images
    (``learning_label``), plus the labelled images and distractors of the other folds when
    ``learn_on_other_folds`` (their labels are not used: fitting is unsupervised).

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2 and at most the number of label groups.
    learn_on_other_folds : bool, default=True
        Add the other folds' images to each fold's learning images.
    shuffle : bool, default=False
        Assign groups to folds in a random order (seeded by ``random_state``) instead of balancing
        fold sizes deterministically.
    random_state : int, RandomState instance or None, default=None
    learning_label, distractor_label : object
        Labels of the learning images and of the distractors in ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.model_selection import LEARNING_LABEL, RetrievalKFold
    >>> y = np.array([LEARNING_LABEL] * 2 + [0, 0, 1, 1, 2, 2, -1, -1])
    >>> for train, test in RetrievalKFold(n_splits=2).split(np.zeros(10), y):
    ...     print(sorted(set(y[test].tolist()) - {-1}), len(train) + len(test))
    [0, 2] 10
    [1] 10
    """

    def __init__(
        self,
        n_splits=5,
        *,
        learn_on_other_folds=True,
        shuffle=False,
        random_state=None,
        learning_label=LEARNING_LABEL,
        distractor_label=DISTRACTOR_LABEL,
    ):
        self.n_splits = n_splits
        self.learn_on_other_folds = learn_on_other_folds
        self.shuffle = shuffle
        self.random_state = random_state
        self.learning_label = learning_label
        self.distractor_label = distractor_label

    def get_n_splits(self, X=None, y=None, groups=None):
        """Returns ``n_splits``."""
        return self.n_splits

    def split(self, X, y=None, groups=None):
        """Yield (learning indices, test indices) for each fold.

        Parameters
        ----------
        X : sequence of length n_samples
        y : array-like of shape (n_samples,)
            Labels: ``learning_label``, ``distractor_label`` (or None), or a label shared by the
            images of one object or place.
        groups : None
            Ignored (the labels are the groups).

        Yields
        ------
        train, test : ndarray of int
        """
        if isinstance(self.n_splits, bool) or not isinstance(self.n_splits, numbers.Integral) or self.n_splits < 2:
            raise ValueError(f"RetrievalKFold: n_splits must be an integer >= 2; got {self.n_splits!r}.")
        learning, distractor, labels = _roles(y, self.learning_label, self.distractor_label)
        scored = np.flatnonzero(~learning)
        members = scored[~distractor[scored]]
        # One group per label; each distractor a group of its own, so that they spread over the folds.
        group_of = {}
        group_ids = np.array(
            [group_of.setdefault(labels[i], len(group_of)) if not distractor[i] else -1 for i in scored]
        )
        n_groups = len(group_of)
        if n_groups < self.n_splits:
            raise ValueError(
                f"RetrievalKFold: n_splits={self.n_splits} folds need at least as many label groups; y has "
                f"{n_groups} ({len(members)} labelled images)."
            )
        lone = group_ids < 0
        group_ids[lone] = n_groups + np.arange(lone.sum())
        folds = GroupKFold(self.n_splits, shuffle=self.shuffle, random_state=self.random_state)
        fixed = np.flatnonzero(learning)
        for other, test in folds.split(scored, groups=group_ids):
            train = np.sort(np.concatenate([fixed, scored[other]])) if self.learn_on_other_folds else fixed
            if len(train) == 0:
                raise ValueError(
                    "RetrievalKFold: a fold has no learning image: mark learning images with "
                    f"{self.learning_label!r} in y or set learn_on_other_folds=True."
                )
            yield train, scored[test]


def _is_distractor(labels: np.ndarray, distractor_label) -> np.ndarray:
    if labels.dtype == object:
        return np.array([label is None or label == distractor_label for label in labels], dtype=bool)
    if distractor_label is None:
        return np.zeros(len(labels), dtype=bool)
    return labels == distractor_label


def _label_ids(labels: np.ndarray) -> np.ndarray:
    """Integer id per distinct label (any hashable labels, also mixed types in an object array)."""
    if labels.dtype != object:
        return np.unique(labels, return_inverse=True)[1].ravel()
    ids: dict = {}
    return np.array([ids.setdefault(label, len(ids)) for label in labels], dtype=np.int64)


class _MapScorer:
    """mAP of a fitted estimator's descriptors where images sharing a label are relevant to each other.

    A plain class (not a closure) so that it pickles for parallel GridSearchCV.
    """

    def __init__(self, distractor_label, metric):
        self.distractor_label = distractor_label
        self.metric = metric

    def __repr__(self):
        return f"make_map_scorer(distractor_label={self.distractor_label!r}, metric={self.metric!r})"

    def __call__(self, estimator, X, y):
        if y is None:
            raise TypeError("map_scorer needs labels y: images sharing a label are relevant to each other.")
        labels = np.asarray(y)
        if labels.ndim != 1:
            labels = np.asarray(list(y), dtype=object)
        descriptors = estimator.transform(X)
        if len(labels) != len(descriptors):
            raise ValueError(f"y has {len(labels)} labels for {len(descriptors)} descriptors.")
        member = ~_is_distractor(labels, self.distractor_label)
        group = np.full(len(labels), -1, dtype=np.int64)
        group[member] = _label_ids(labels[member])
        sizes = np.bincount(group[member], minlength=1)
        queries = np.flatnonzero(member & (sizes[np.maximum(group, 0)] >= 2))
        if len(queries) == 0:
            raise ValueError(
                "map_scorer: no image shares its label with another non-distractor image, so there is no query "
                "with a positive (check the labels and the cross-validation split)."
            )
        metric = resolve_metric(self.metric, descriptors)
        scores = similarities(descriptors[queries], descriptors, metric=metric)
        positive_mask = group[queries][:, None] == group[None, :]
        positive_mask &= member[None, :]
        positive_mask[np.arange(len(queries)), queries] = False
        junk_mask = np.zeros_like(positive_mask)
        junk_mask[np.arange(len(queries)), queries] = True
        return float(np.mean(_tie_aware_average_precision_rows(scores, positive_mask, junk_mask)))


def make_map_scorer(*, distractor_label=DISTRACTOR_LABEL, metric="auto"):
    """A ``scoring=`` callable for GridSearchCV: mAP of ``estimator.transform(X)`` with labels y.

    Each image whose label is shared by another image is a query; the images sharing its label are
    its positives; the query itself is junk; images labelled ``distractor_label`` (or None) are only
    database members. Every image is in the database. AP is tie-aware
    (:func:`tie_aware_average_precisions`): equal scores are not ordered by index.

    Parameters
    ----------
    distractor_label : object, default=DISTRACTOR_LABEL (-1)
    metric : {"auto", "ip", "hamming"}, default="auto"
        "auto": Hamming for uint8 codes, inner product otherwise.

    Returns
    -------
    scorer : callable ``scorer(estimator, X, y) -> float`` (greater is better)
    """
    if metric not in ("auto", "ip", "hamming"):
        raise ValueError(f"metric must be 'auto', 'ip' or 'hamming'; got {metric!r}.")
    return _MapScorer(distractor_label, metric)


map_scorer = make_map_scorer()
"""``scorer(estimator, X, y)``: :func:`make_map_scorer` with its defaults."""
