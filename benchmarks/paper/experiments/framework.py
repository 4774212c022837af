"""The framework's experiments: mask x dimension learned on the training photos (with the alpha sweep and ITQ)
and on the database, the Table 9 replica and the final-dimension sweep.

Each configuration is fitted once and its vectors before the power law are kept, so the alpha sweep and
ITQ cost no refit.
"""

from __future__ import annotations

import time

from ..report.tables import (
    write_alpha_section,
    write_dimension_section,
    write_framework_section,
    write_itq_section,
    write_table9_section,
)
from ..settings import ALPHAS, ITQ_BITS, MASK_NAMES, VARIANTS

# ---------------------------------------------------------------------------------------------------
# Fit once per configuration, keep the vectors before the power law


def fit_framework(
    run,
    sets,
    *,
    dim,
    mask,
    fit_on,
    label,
    n_components=None,
    n_clusters=None,
    n_dropped=None,
    variant="paper",
):
    """Fit mask-less paper pipeline stages on masked sets; return pre-PN vectors of train/db/official.

    ``variant``: a key of settings.VARIANTS (the learned whitenings' shrinkage, and a whitened rotation).
    """
    from selconv import make_paper_pipeline
    from selconv.pipelines import rotation_settings

    fit_sets = sets["train"] if fit_on == "training" else sets["db"]
    # With fewer learning images than rotated dimensions (e.g. 1,000 images for the 1152 of the 1024-D
    # preset) the rotation keeps only the directions they determine (and, unless n_dropped is given,
    # drops none): the recorded "dim" says how many remain. This is the protocol of the committed
    # results, so it stays "drop" here where the library's rotation_settings would skip the rotation.
    rotation, note = rotation_settings(len(fit_sets), dim, fit_on=fit_on, n_dropped=n_dropped)
    if note is not None or n_dropped is not None:
        rotation = {"n_dropped": rotation["n_dropped"] if n_dropped is None else n_dropped, "undetermined": "drop"}
    shrinkage, whiten = VARIANTS[variant]
    pipeline = make_paper_pipeline(
        dim, mask=mask, fit_on=fit_on, random_state=run.rng_seed, shrinkage=shrinkage, **rotation
    )
    pipeline.set_params(rotate__whiten=whiten)
    if n_components is not None:
        pipeline.set_params(pca__n_components=n_components)
    if n_clusters is not None:
        pipeline.set_params(encode__embedding__n_clusters=n_clusters)
    return fit_transform_head(run, pipeline[1:-1], sets, fit_on=fit_on, label=label)


def fit_transform_head(run, head, sets, *, fit_on, label):
    """Fit ``head`` ([pca, encode, rotate], the mask applied once in phase_masks) on the ``fit_on`` split of the
    masked ``sets``; {head, pre: its vectors of train/db/official before the power law, fit_s, transform_s, dim}."""
    t0 = time.perf_counter()
    with run.recording_warnings(label):
        fitted = fit_head(run, head, sets["train"] if fit_on == "training" else sets["db"])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pre = {"train" if fit_on == "training" else "db": fitted}
    for split in ("db", "official"):
        if split not in pre:
            pre[split] = run.transform(head, sets[split])
    transform_s = time.perf_counter() - t0
    return {"head": head, "pre": pre, "fit_s": fit_s, "transform_s": transform_s, "dim": int(fitted.shape[1])}


def fit_head(run, head, sets):
    """``head.fit_transform(sets)`` for [pca, encode, rotate], with the per-image work in threads.

    Same result as the Pipeline's own fit_transform (each stage is fitted on the previous stages' output),
    but the transforms run over image chunks in parallel; ``encode`` streams the embedded local features.
    """
    pca, encode, rotate = (estimator for _, estimator in head.steps)
    reduced = run.transform(pca.fit(sets), sets)
    aggregated = run.transform(encode.fit(reduced), reduced)
    return rotate.fit(aggregated).transform(aggregated)


def fit_each(run, dims, masks, *, skipped, label, record, after, sets=None, fit_on="training", variant="paper"):
    """Fit the framework at every (dim, mask) while time is left; return the MAX 512-D fit (or None).

    ``skipped`` and ``label`` are format strings of ``mask`` and ``dim`` (the skipped entry once over budget;
    the phase timer's and warnings' label). ``record(mask, dim, fitted)`` runs inside the timed phase,
    ``after()`` after each fit; ``sets(mask)`` gives the masked sets (default: the run's); ``variant`` is
    fit_framework's.
    """
    max_512 = None
    for dim in dims:
        for mask in masks:
            if not run.within_budget(skipped.format(mask=mask, dim=dim)):
                continue
            name = label.format(mask=mask, dim=dim)
            with run.timer.phase(name):
                mask_sets = run.sets[mask] if sets is None else sets(mask)
                fitted = fit_framework(run, mask_sets, dim=dim, mask=mask, fit_on=fit_on, label=name, variant=variant)
                record(mask, dim, fitted)
            if dim == 512 and mask == "max":
                max_512 = fitted
            after()
    return max_512


def power(pre, alpha=0.5):
    from selconv import PowerNormalizer

    return PowerNormalizer(alpha=alpha).fit_transform(pre)


def score_framework(run, fitted, alpha=0.5):
    return run.evaluate(power(fitted["pre"]["db"], alpha), power(fitted["pre"]["official"], alpha))


def framework_record(run, fitted, **extra):
    """What the results keep of one fitted configuration: its scores, dimension and fit/transform times."""
    return dict(
        score_framework(run, fitted),
        dim=fitted["dim"],
        fit_s=fitted["fit_s"],
        transform_s=fitted["transform_s"],
        **extra,
    )


# ---------------------------------------------------------------------------------------------------
# Phase: masks x dimension 512/1024, learned on the training photos (Tables 3, 8) + alpha (Fig. 4) + ITQ


def phase_framework_training(run):
    run.results["alpha"] = {}

    def record(mask, dim, fitted):
        run.results["framework"][f"training/{mask}/{dim}"] = framework_record(run, fitted)
        if dim == 1024:
            run.results["alpha"][mask] = {str(a): score_framework(run, fitted, alpha=a) for a in ALPHAS}

    def after():
        write_framework_section(run)
        write_alpha_section(run)

    fitted_512_max = fit_each(
        run,
        (1024, 512),
        MASK_NAMES,
        skipped="training fit {mask} {dim}",
        label="fit training: {mask} {dim}-D",
        record=record,
        after=after,
    )
    if fitted_512_max is not None:
        with run.timer.phase("ITQ on MAX 512-D"):
            run.results["itq"] = itq_scores(run, fitted_512_max)
            write_itq_section(run)


def itq_scores(run, fitted, skip_prefix=""):
    """mAP of ITQ codes at every ITQ_BITS (learned on the fit set's 512-D vectors) and of the real vectors."""
    from selconv import ITQHasher

    train = power(fitted["pre"]["train"])
    db, official = power(fitted["pre"]["db"]), power(fitted["pre"]["official"])
    itq = {"real": run.evaluate(db, official)}
    for bits in ITQ_BITS:
        if bits > min(train.shape):  # ITQ's PCA needs n_bits <= dimension and <= training vectors
            run.results["skipped"][f"{skip_prefix}ITQ {bits} bits"] = (
                f"needs {bits} <= {min(train.shape)} training vectors"
            )
            continue
        hasher = ITQHasher(bits, random_state=run.rng_seed).fit(train)
        itq[str(bits)] = run.evaluate(hasher.transform(db), hasher.transform(official), metric="hamming")
    return itq


# ---------------------------------------------------------------------------------------------------
# Phase: learned on the database (paper Table 9 protocol; no truncation)


def phase_framework_database(run):
    def record(mask, dim, fitted):
        run.results["framework"][f"database/{mask}/{dim}"] = framework_record(run, fitted)

    fit_each(
        run,
        (1024, 512),
        MASK_NAMES,
        skipped="database fit {mask} {dim}",
        label="fit database: {mask} {dim}-D",
        record=record,
        after=lambda: write_framework_section(run),
        fit_on="database",
    )
    # Why no truncation: the same fit with the 128 leading components dropped (docs/how-it-works.md, "Learned stages").
    n_db = len(run.sets["max"]["db"])
    if n_db <= 129:
        run.results["skipped"]["database truncated"] = (
            f"{n_db} database images determine at most {n_db - 1} directions: too few to drop 128"
        )
    elif not run.over_budget():
        run.results["framework"]["database-truncated/max/512"] = fit_truncated(
            run, "max", "fit database, truncated: max 512-D"
        )
        write_framework_section(run)


def fit_truncated(run, mask, label) -> dict:
    """The record of ``mask`` at 512-D learned on the database with the 128 leading components dropped."""
    with run.timer.phase(label):
        fitted = fit_framework(run, run.sets[mask], dim=512, mask=mask, fit_on="database", n_dropped=128, label=label)
        return framework_record(run, fitted)


def phase_table9(run):
    """Paper Table 9: learned on the database, Temb(64, 64) = 4096-D, no truncation, PCA to 512."""
    run.results["table9"] = {}
    d, n_clusters = run.args.table9
    for mask in ("max", "sum"):
        if not run.within_budget(f"table 9 {mask}"):
            continue
        label = f"table 9: {mask} Temb({d},{n_clusters}) db-fit -> 512"
        with run.timer.phase(label):
            fitted = fit_framework(
                run,
                run.sets[mask],
                dim=512,
                mask=mask,
                fit_on="database",
                n_components=d,
                n_clusters=n_clusters,
                n_dropped=0,
                label=label,
            )
            # The rotation's columns are sorted by decreasing variance: the first 512 are the PCA to 512.
            db = power(fitted["pre"]["db"][:, :512])
            official = power(fitted["pre"]["official"][:, :512])
            run.results["table9"][mask] = dict(run.evaluate(db, official), fit_s=fitted["fit_s"])
    write_table9_section(run)


# ---------------------------------------------------------------------------------------------------
# Phase: final dimension 2048 / 4096 (Table 4, Fig. 5)


def phase_dimensions(run):
    def record(mask, dim, fitted):
        n_train = len(fitted["pre"]["train"])
        run.results["framework"][f"training/{mask}/{dim}"] = framework_record(run, fitted, n_train=n_train)

    fit_each(
        run,
        run.args.sweep_dims,
        ("max", "sum"),
        skipped="training fit {mask} {dim}",
        label="fit training: {mask} {dim}-D",
        record=record,
        after=lambda: write_dimension_section(run),
    )
