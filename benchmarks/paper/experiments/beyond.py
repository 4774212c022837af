"""Beyond the paper (issue 12), applied alike to the framework and to every baseline, learned on the generic photos:
re-ranking (phase 'rerank': none / alpha-QE / DBA + alpha-QE), robust learned steps on the same-domain learning
set too (phase 'robust') and multi-scale description (phase 'multiscale')."""

from __future__ import annotations

from ..protocols import learning_set
from ..report.beyond import write_options_section, write_robust_section, write_target_section
from ..settings import BASELINES, OPTION_DIMS, OPTION_MASKS, RERANK_LEVELS, ROBUST_SOURCE, SCALES, VARIANTS
from .baselines import baseline_descriptors, chosen_shrinkage, shrink_label
from .features import make_extractor, masked_sets
from .framework import fit_each, framework_record, power


def reranked(run, db, official, **extra) -> dict:
    """{'levels': {re-ranking level: both protocols' scores}, **extra} of one method's descriptors."""
    return dict(levels={level: run.evaluate(db, official, rerank=level) for level in RERANK_LEVELS}, **extra)


def option_rows(run, option, sets_of, maps, variants=tuple(VARIANTS), baselines=BASELINES):
    """Framework (OPTION_MASKS x OPTION_DIMS x ``variants`` of VARIANTS) and the ``baselines``, every re-ranking
    level.

    Stored in results['options'][option] (key by key: a merge keeps an earlier run's other methods);
    ``sets_of(mask)`` gives the masked sets, ``maps`` the conv maps (single- or multi-scale) of every split.
    Each configuration is fitted once for all re-ranking levels; the baselines' whitening is the one the
    training-only proxy task chose on the generic photos.
    """
    store = run.results.setdefault("options", {}).setdefault(option, {})

    def after():
        write_options_section(run)
        write_robust_section(run)  # its generic-photo rows are the single-scale ones
        write_target_section(run)

    def record(key, fitted):
        store[key] = reranked(run, power(fitted["pre"]["db"]), power(fitted["pre"]["official"]), dim=fitted["dim"])

    fit_variants(run, option, sets_of, record, after, variants=variants)
    for name in baselines:
        if not run.within_budget(f"{option} baseline {name}"):
            continue
        label = f"{option}: baseline {name}"
        with run.timer.phase(label):
            shrinkage = chosen_shrinkage(run, name)
            db, official = baseline_descriptors(run, name, shrinkage, maps["train"], maps, label)
            store[name] = reranked(run, db, official, dim=int(db.shape[1]), whitening=shrink_label(shrinkage))
        after()


def phase_rerank(run):
    """Single-scale pool5 (the maps of every other phase), every method at every re-ranking level."""
    option_rows(run, "single-scale", lambda mask: run.sets[mask], run.maps)


def phase_multiscale(run):
    """Conv maps at SCALES of --max-size (scale 1 from the single-scale cache), masks pooling local features
    across scales, baselines summing their per-scale descriptors; every method of --multiscale-methods (default
    all) at every re-ranking level (the masks only when a framework variant is among them)."""
    variants, baselines = run.args.multiscale_methods
    # Keypoints as phase_extract's: the cache's scale-1 maps are reused (SIFT is not used by MAX or SUM).
    extractor = make_extractor(run, "pool5", "sift", scales=SCALES)
    data = run.data
    maps = {}
    for split, items in (("train", data.training), ("db", data.database), ("official", data.official_items)):
        with run.timer.phase(f"extract multi-scale pool5: {split} ({len(items)} images)"):
            maps[split] = extractor.transform(items)
    sets = {}
    for mask in OPTION_MASKS if variants else ():
        with run.timer.phase(f"multi-scale mask {mask}"):
            sets[mask] = masked_sets(run, mask, maps)[1]
    run.results["multiscale_scales"] = list(SCALES)
    option_rows(run, "multi-scale", sets.__getitem__, maps, variants=variants, baselines=baselines)


def phase_robust(run):
    """The framework's VARIANTS learned on the same-domain learning set of --train-source (ROBUST_SOURCE when
    that is 'generic'); the generic-photo rows are phase rerank's (no re-ranking)."""
    source = ROBUST_SOURCE if run.args.train_source == "generic" else run.args.train_source
    rows = run.data.unlabelled_rows
    result = run.results.setdefault("robust", {}).setdefault(source, {})
    result["n_train"] = len(learning_set(source, rows, run.data.database, run.data.training))

    def sets(mask):
        return dict(run.sets[mask], train=learning_set(source, rows, run.sets[mask]["db"], run.sets[mask]["train"]))

    def record(key, fitted):
        result[key] = framework_record(run, fitted)

    fit_variants(run, f"robust[{source}]", sets, record, lambda: write_robust_section(run))


def fit_variants(run, name, sets, record, after, variants=tuple(VARIANTS)):
    """The framework at OPTION_MASKS x OPTION_DIMS x ``variants`` (of VARIANTS), while time is left (see fit_each).

    ``record(key, fitted)`` with key 'mask/dim/variant'; ``name`` starts the skipped entries and timer labels.
    """
    for variant in variants:
        fit_each(
            run,
            OPTION_DIMS,
            OPTION_MASKS,
            skipped=f"{name} fit " + "{mask} {dim} " + variant,
            label=f"{name}: fit {variant} " + "{mask} {dim}-D",
            record=lambda mask, dim, fitted, variant=variant: record(f"{mask}/{dim}/{variant}", fitted),
            after=after,
            sets=sets,
            variant=variant,
        )
