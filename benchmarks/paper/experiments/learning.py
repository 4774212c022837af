"""Experiments on the learning set: learned on same-domain held-out images (phase 'domain', the stand-in
for the paper's Paris6k) and on the searched database with naive and with safe settings (phase 'protocols')."""

from __future__ import annotations

from ..protocols import learning_set
from ..report.learning import write_domain_section, write_protocols_section
from ..settings import BASELINES, MASK_NAMES, PROTOCOL_MASKS
from .baselines import baseline_scores, baseline_test
from .framework import fit_each, fit_truncated, framework_record, itq_scores


def phase_protocols(run):
    """What learning on the searched collection itself does, with the naive settings and with selconv's.

    Framework (MAX, SUM at 512-D): learned on the database with the paper's default truncation (128 leading
    components dropped; the naive reuse of the generic-photo settings) next to ``fit_on="database"`` (nothing
    dropped; phase framework-database). Baselines: PCA-whitening learned on the database with no shrinkage
    (the usual recipe) and with selconv's default Ledoit-Wolf shrinkage. The generic-photo columns come from the phases
    framework-training and baselines of the same run.
    """
    result = run.results.setdefault("protocols", {"framework": {}, "baselines": {}})
    for mask in PROTOCOL_MASKS:
        if not run.within_budget(f"protocols truncated {mask}"):
            continue
        n_db = len(run.sets[mask]["db"])
        if n_db <= 129:
            run.results["skipped"][f"protocols truncated {mask}"] = f"{n_db} database images: too few to drop 128"
            continue
        result["framework"][f"database-truncated/{mask}/512"] = fit_truncated(
            run, mask, f"protocols: database, truncated, {mask} 512-D"
        )
        write_protocols_section(run)
    for name in BASELINES:
        for setting, shrinkage in (("no shrinkage", 0.0), ("ledoit-wolf", "ledoit-wolf")):
            if not run.within_budget(f"protocols baseline {name} {setting}"):
                continue
            with run.timer.phase(f"protocols: baseline {name} on the database, {setting}"):
                result["baselines"].setdefault(name, {})[setting] = baseline_test(
                    run, name, shrinkage, run.maps["db"], f"protocols baseline {name}"
                )
        write_protocols_section(run)


def phase_domain(run):
    """Framework (4 masks x 512/1024-D), the five baselines and ITQ, learned on ``--train-source`` images.

    'oxford-unlabelled': the database images in no ground-truth list of any query (Data.unlabelled_rows),
    the held-out, same-domain stand-in for the paper's Paris6k; 'both': those plus the generic photos.
    Their maps and masked sets are the database's (nothing is extracted again).
    """
    source = run.args.train_source
    rows = run.data.unlabelled_rows
    result = run.results.setdefault("domain", {}).setdefault(source, {"framework": {}, "baselines": {}})
    result["n_train"] = len(learning_set(source, rows, run.data.database, run.data.training))
    prefix = f"domain[{source}] "

    def sets(mask):
        return dict(run.sets[mask], train=learning_set(source, rows, run.sets[mask]["db"], run.sets[mask]["train"]))

    def record(mask, dim, fitted):
        result["framework"][f"{mask}/{dim}"] = framework_record(run, fitted)

    def after():
        write_domain_section(run)
        run.save_json()

    fitted_512_max = fit_each(
        run,
        (1024, 512),
        MASK_NAMES,
        skipped=prefix + "fit {mask} {dim}",
        label=f"fit {source}: " + "{mask} {dim}-D",
        record=record,
        after=after,
        sets=sets,
    )
    if fitted_512_max is not None and not run.over_budget():
        with run.timer.phase(f"{prefix}ITQ on MAX 512-D"):
            result["itq"] = itq_scores(run, fitted_512_max, skip_prefix=prefix)
        write_domain_section(run)
    del fitted_512_max
    train_maps = learning_set(source, rows, run.maps["db"], run.maps["train"])
    baseline_scores(run, train_maps, result["baselines"], prefix=prefix, write=write_domain_section)
