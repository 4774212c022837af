"""Data and evaluation protocols: the Oxford subset's two query protocols, the learning sets, the proxy task.

``Data`` loads both protocols of the shared Oxford subset (optionally on a limited database) and the generic
training photos; :func:`evaluate` scores descriptors on both protocols; :func:`learning_set` builds the
same-domain learning sets of the 'domain' phase; :func:`proxy_task` is the training-only retrieval task that
chooses the baselines' whitening.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .settings import PROXY_SIDE, RERANK_ALPHA, RERANK_K, RERANK_LEVELS


class Data:
    """Paths and ground truth of both protocols, with the database (and training set) optionally limited."""

    def __init__(self, args):
        from selconv.datasets import load_generic_training_images, load_oxford5k_subset

        root = args.data_dir / "oxford5k-subset"
        official = load_oxford5k_subset(root, "official-10", training_root=None)
        loo = load_oxford5k_subset(root, "loo-landmark", training_root=None)
        if [str(p) for p in official.database] != [str(p) for p in loo.database]:
            raise RuntimeError("the two protocols of the Oxford subset disagree on the database order")
        training = load_generic_training_images(args.data_dir)
        if args.limit_train is not None and args.limit_train < len(training):
            # Evenly spaced, so a small training set still mixes both sources.
            picks = np.linspace(0, len(training) - 1, args.limit_train).round().astype(int)
            training = [training[i] for i in picks]
        self.training = [str(p) for p in training]

        keep = self._database_subset(len(official.database), [official, loo], args.limit_db)
        self.database = [str(official.database[i]) for i in keep]
        position = {int(old): new for new, old in enumerate(keep)}
        self.notes = []
        # official-10: queries are box crops (not database rows).
        self.official_items, self.official_gt, self.official_names = [], [], []
        for path, box, label, gt in zip(
            official.queries, official.query_boxes, official.query_labels, official.ground_truth
        ):
            gt = self._remap(gt, position)
            if gt is None:
                continue
            self.official_items.append((str(path), tuple(box)) if box is not None else str(path))
            self.official_gt.append(gt)
            self.official_names.append(f"{Path(path).stem} ({label})")
        # loo-landmark: each query is a database image.
        index_of = {p: i for i, p in enumerate(self.database)}
        self.loo_rows, self.loo_gt = [], []
        for path, gt in zip(loo.queries, loo.ground_truth):
            row = index_of.get(str(path))
            gt = self._remap(gt, position)
            if row is None or gt is None:
                continue
            self.loo_rows.append(row)
            self.loo_gt.append(gt)
        self.loo_rows = np.asarray(self.loo_rows, dtype=np.int64)
        if len(self.official_gt) < len(official.queries) or len(self.loo_gt) < len(loo.queries):
            self.notes.append(
                f"Database limited to {len(self.database)} images: {len(self.official_gt)}/{len(official.queries)} "
                f"official and {len(self.loo_gt)}/{len(loo.queries)} "
                "leave-one-out queries keep a positive and are used."
            )
        if not self.official_gt or not self.loo_gt:
            raise RuntimeError("no query has a positive in the (limited) database: raise --limit-db")
        self.unlabelled_rows, self.n_groundtruth_queries = self._unlabelled_rows(root / "groundtruth", self.database)

    @staticmethod
    def _unlabelled_rows(groundtruth, database):
        """Database rows named in NO ground-truth list (query, good, ok or junk) of any official query.

        Same domain as the test images and disjoint from every query and labelled image: the held-out
        stand-in for the paper's Paris6k of the 'domain' phase (they remain database images, as distractors).
        """
        from selconv.datasets.oxford_paris import read_oxford_ground_truth

        queries = read_oxford_ground_truth(groundtruth)
        named = {q.image for q in queries}.union(*(set(q.good) | set(q.ok) | set(q.junk) for q in queries))
        rows = np.array([i for i, path in enumerate(database) if Path(path).stem not in named], dtype=np.int64)
        return rows, len(queries)

    def summary(self) -> dict:
        """The counts the report quotes (stored in the JSON, so a merge needs no data folder)."""
        return {
            "n_database": len(self.database),
            "n_training": len(self.training),
            "n_official": len(self.official_gt),
            "n_loo": len(self.loo_gt),
            "n_unlabelled": int(len(self.unlabelled_rows)),
            "n_groundtruth_queries": self.n_groundtruth_queries,
            "notes": list(self.notes),
        }

    @staticmethod
    def _database_subset(n_images, datasets, limit):
        if limit is None or limit >= n_images:
            return np.arange(n_images)
        # Labelled images first, so a small database still has positives: one positive of every query of
        # each protocol, then all positives, then the rest.
        firsts = [int(gt["positives"][0]) for ds in datasets for gt in ds.ground_truth if len(gt["positives"])]
        positives = [int(i) for ds in datasets for gt in ds.ground_truth for i in gt["positives"]]
        priority = list(dict.fromkeys(firsts + positives + list(range(n_images))))
        return np.sort(np.asarray(priority[:limit], dtype=np.int64))

    @staticmethod
    def _remap(gt, position):
        positives = np.array([position[i] for i in gt["positives"] if int(i) in position], dtype=np.int64)
        junk = np.array([position[i] for i in gt["junk"] if int(i) in position], dtype=np.int64)
        if len(positives) == 0:
            return None
        return {"positives": positives, "junk": junk}


def evaluate(data: Data, db_desc, official_desc, metric="ip", rerank="none") -> dict:
    """mAP (in %) and its standard error over queries, for both protocols.

    ``rerank``: one of settings.RERANK_LEVELS ('none', 'alpha-QE', 'DBA+alpha-QE'), with the parameters fixed
    a priori in settings (RERANK_K, RERANK_ALPHA), applied alike to every method.
    """
    from selconv import evaluate as evaluate_queries

    out = {}
    for protocol, queries, gt in (
        ("official-10", official_desc, data.official_gt),
        ("loo-landmark", db_desc[data.loo_rows], data.loo_gt),
    ):
        result = evaluate_queries(queries, db_desc, gt, metric=metric, **rerank_options(rerank))
        aps = np.asarray(result.average_precisions, dtype=np.float64)
        aps = aps[np.isfinite(aps)]
        out[protocol] = {
            "aps": [round(100.0 * float(a), 3) for a in aps],  # per query, for paired comparisons
            "map": 100.0 * float(aps.mean()),
            "se": 100.0 * float(aps.std(ddof=1) / np.sqrt(len(aps))) if len(aps) > 1 else float("nan"),
            "n_queries": int(len(aps)),
        }
    return out


def rerank_options(level: str) -> dict:
    """The keyword arguments of :func:`selconv.evaluate` for re-ranking ``level``."""
    from selconv import AlphaQueryExpansion, DatabaseAugmentation

    if level not in RERANK_LEVELS:
        raise ValueError(f"re-ranking level must be one of {RERANK_LEVELS}; got {level!r}")
    options = {}
    if level != "none":
        options["query_expansion"] = AlphaQueryExpansion(RERANK_K, alpha=RERANK_ALPHA)
    if level == "DBA+alpha-QE":
        options["database_augmentation"] = DatabaseAugmentation(RERANK_K, alpha=RERANK_ALPHA)
    return options


def learning_set(source: str, unlabelled_rows, db_items: list, generic_items: list) -> list:
    """The 'domain' phase's learning set: the unlabelled database items ('oxford-unlabelled'), after the
    generic ones for 'both'."""
    same_domain = [db_items[i] for i in unlabelled_rows]
    return same_domain if source == "oxford-unlabelled" else list(generic_items) + same_domain


# --------------------------------------------------------------------------------------------------
# The proxy task choosing the baselines' whitening on the training set only


def random_subwindow(features: np.ndarray, rng: np.random.Generator, side_fraction: float) -> np.ndarray:
    """A random window of ``side_fraction`` of each side of a (K, H, W) map (at least 1 x 1 cells).

    Stands in for the conv map of a crop of the image: the training-only proxy query of
    :func:`proxy_retrieval_map`.
    """
    _, h, w = features.shape
    hh, ww = max(1, round(h * side_fraction)), max(1, round(w * side_fraction))
    y0 = int(rng.integers(0, h - hh + 1))
    x0 = int(rng.integers(0, w - ww + 1))
    return features[:, y0 : y0 + hh, x0 : x0 + ww]


def proxy_task(train: list, seed: int) -> tuple[list, list, list]:
    """(learning half, proxy queries, proxy database) of the maps ``train``, split at random by ``seed``.

    Two independent random windows (half of each side) of each map of the other half stand in for two
    partly overlapping views of one scene; one is the query, the other its only positive.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    half_a = [train[i] for i in order[: len(train) // 2]]
    half_b = [train[i] for i in order[len(train) // 2 :]]
    windows = [
        [random_subwindow(np.asarray(m.features, dtype=np.float32), rng, PROXY_SIDE) for _ in range(2)] for m in half_b
    ]
    return half_a, [w[0] for w in windows], [w[1] for w in windows]


def proxy_retrieval_map(query_desc: np.ndarray, db_desc: np.ndarray) -> float:
    """mAP of finding image i (database row i) from query i, the sub-window of image i: one positive each.

    With a single positive, AP is 1 / (rank + 1) (the Oxford AP of section 9 reduces to that too,
    up to the trapezoid, which is monotone in the rank), so this is a mean reciprocal rank.
    """
    scores = query_desc @ db_desc.T
    own = scores[np.arange(len(scores)), np.arange(len(scores))]
    ranks = (scores > own[:, None]).sum(axis=1)
    return float(np.mean(1.0 / (ranks + 1.0)))
