"""The baselines' experiment: SPoC, MAC, R-MAC, CroW and GeM at equal dimension (paper Table 8), each
with the PCA-whitening shrinkage a proxy task chooses on the learning set only."""

from __future__ import annotations

from ..protocols import proxy_retrieval_map, proxy_task
from ..report.learning import write_baseline_section
from ..settings import BASELINES, SHRINKAGE_GRID


def phase_baselines(run):
    run.results["baselines"] = {}
    baseline_scores(run, run.maps["train"], run.results["baselines"], write=write_baseline_section)


def baseline_scores(run, train, store, *, prefix="", write=None):
    """Fit the five baselines on the maps ``train`` (whitening chosen by the proxy task on them) into ``store``.

    ``prefix`` starts the timer, skip and warning labels; ``write(run)`` is called after each baseline.
    """
    split = proxy_task(train, run.rng_seed)
    for name in BASELINES:
        if not run.within_budget(f"{prefix}baseline {name}"):
            continue
        with run.timer.phase(f"{prefix}baseline {name}"):
            proxy, chosen = proxy_choice(run, name, split, prefix)
            # Test mAP of the chosen setting (the headline) and of two fixed references (not used to choose).
            scores = {
                shrink_label(s): baseline_test(run, name, s, train, f"{prefix}baseline {name}")
                for s in dict.fromkeys([chosen, "ledoit-wolf", None])
            }
            store[name] = {"proxy_mrr": proxy, "chosen": shrink_label(chosen), "test": scores}
        if write is not None:
            write(run)


def proxy_choice(run, name, split, prefix=""):
    """({setting: proxy MRR}, the chosen whitening shrinkage) of baseline ``name`` on proxy_task's ``split``."""
    half_a, proxy_queries, proxy_database = split
    proxy = {}
    for shrinkage in SHRINKAGE_GRID:
        pipe = make_whitened_baseline(name, shrinkage)
        with run.recording_warnings(f"{prefix}baseline {name} proxy"):
            pipe.fit(half_a)
            proxy[shrink_label(shrinkage)] = 100.0 * proxy_retrieval_map(
                pipe.transform(proxy_queries), pipe.transform(proxy_database)
            )
    return proxy, max(SHRINKAGE_GRID, key=lambda s: proxy[shrink_label(s)])


def chosen_shrinkage(run, name):
    """The whitening shrinkage the training-only proxy task chose for baseline ``name`` (on the generic photos):
    this run's phase 'baselines', else the --reuse-json file's, else the proxy task run now."""
    for results in (run.results, run.reused):
        chosen = results.get("baselines", {}).get(name, {}).get("chosen")
        if chosen is not None:
            return {shrink_label(s): s for s in SHRINKAGE_GRID}[chosen]
    with run.timer.phase(f"proxy task: baseline {name} whitening"):
        return proxy_choice(run, name, proxy_task(run.maps["train"], run.rng_seed))[1]


def baseline_test(run, name, shrinkage, train, label) -> dict:
    """Test mAP of baseline ``name`` with whitening ``shrinkage`` learned on the maps ``train``."""
    db, official = baseline_descriptors(run, name, shrinkage, train, run.maps, label)
    return dict(run.evaluate(db, official), dim=int(db.shape[1]))


def baseline_descriptors(run, name, shrinkage, train, maps, label):
    """(database, official query) descriptors of baseline ``name``, whitening ``shrinkage`` learned on ``train``;
    ``maps``: the run's maps (single- or multi-scale), with splits 'db' and 'official'."""
    pipe = make_whitened_baseline(name, shrinkage)
    with run.recording_warnings(label):
        pipe.fit(train)
        return run.transform(pipe, maps["db"]), pipe.transform(maps["official"])


def make_whitened_baseline(name, shrinkage):
    """Baseline ``name`` with PCA-whitening of eigenvalue shrinkage ``shrinkage`` (None: no whitening)."""
    from selconv import make_baseline

    if shrinkage is None:
        return make_baseline(name, whitening=False)
    return make_baseline(name, whitening=True, shrinkage=shrinkage)


def shrink_label(shrinkage) -> str:
    return "no whitening" if shrinkage is None else f"shrinkage={shrinkage}"
