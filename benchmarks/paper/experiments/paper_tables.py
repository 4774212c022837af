"""The paper's remaining tables on the Oxford subset, learned on the generic photos: Table 3 (FV, VLAD, Temb,
F-FAemb with democratic pooling, FV with average and VLAD with sum pooling, x every mask, at the comparable
dimension 4224) and Table 7 (ITQ, KMH, RBA on the MAX 512-D vectors at 64-512 bits)."""

from __future__ import annotations

from ..report.beyond import write_table3_section, write_table7_section
from ..settings import HASHERS, ITQ_BITS, TABLE3
from .framework import fit_each, fit_transform_head, framework_record, power


def table3_head(run, name, n_train):
    """[pca, encode, rotate] of Table 3's framework ``name``: its (d, |C|) and pooling of TABLE3.

    The rotation: the paper's (RN, dropping Temb's 128 / F-FAemb's d(d+1) leading components, none for FV
    and VLAD) when the learning images determine it; else (1,000 generic photos for 4224 dimensions) only
    centred, alike for every embedding (RotationNormalizer's undetermined='center'). Encoding on the run's
    CUDA device when the CNN runs on one (see :func:`encode_device`), else on the CPU (numpy).
    """
    import selconv
    from selconv import make_paper_pipeline

    estimator, d, n_clusters, pooling = TABLE3[name]
    embedding = getattr(selconv, estimator)(n_clusters, random_state=run.rng_seed)
    rotated = {"FisherVectorEmbedding": 2 * d * n_clusters, "FAembEmbedding": n_clusters * d * (d + 1) // 2}.get(
        estimator, d * n_clusters
    )
    if n_train > rotated:
        n_dropped = {"TriangulationEmbedding": 128, "FAembEmbedding": d * (d + 1)}.get(estimator, 0)
        rotation = {"n_dropped": n_dropped, "undetermined": "raise"}
    else:
        rotation = {"n_dropped": 0, "undetermined": "center"}
    head = make_paper_pipeline(512, random_state=run.rng_seed, **rotation)[1:-1]
    head.set_params(pca__n_components=d, encode__embedding=embedding, encode__device=encode_device(run))
    if pooling is not None:
        head.set_params(encode__aggregator=getattr(selconv, pooling)())
    return head


def encode_device(run) -> str:
    """The CUDA device the run's CNN resolved (``--device auto`` / ``cuda[:i]``, recorded by phase_extract in
    results['pool5']['device']) for EncodeAggregate, else 'cpu' (its numpy path)."""
    device = str(run.results.get("pool5", {}).get("device", "cpu"))
    return device if device.startswith("cuda") else "cpu"


def phase_table3(run):
    """Every --table3-rows framework x --table3-masks, while time is left. Each finished cell is saved at once (the
    JSON and the report section): a run killed at its time limit keeps the cells it finished; a cell that
    fails is recorded in results['errors'] and the others still run."""
    import traceback

    store = run.results.setdefault("table3", {})
    for mask in run.args.table3_masks:
        for name in run.args.table3_rows:
            cell = f"table 3 {name} {mask}"
            if not run.within_budget(cell):
                continue
            label = f"table 3: {name} {mask}"
            try:
                with run.timer.phase(label):
                    head = table3_head(run, name, len(run.sets[mask]["train"]))
                    fitted = fit_transform_head(run, head, run.sets[mask], fit_on="training", label=label)
                    rotated = bool(head[-1].rotated_)
                    store[f"{name}/{mask}"] = framework_record(run, fitted, rotated=rotated, device=head[1].device)
            except Exception as error:  # one failed cell must not lose the others
                traceback.print_exc()
                run.results["errors"][cell] = f"{type(error).__name__}: {error}"
            write_table3_section(run)
            run.save_json()


def phase_table7(run):
    """KMH and RBA codes of the MAX 512-D vectors (ITQ: phase framework-training's, not repeated)."""
    fitted = fit_each(
        run,
        (512,),
        ("max",),
        skipped="table 7 fit {mask} {dim}",
        label="table 7: fit {mask} {dim}-D",
        record=lambda mask, dim, fitted: None,
        after=lambda: None,
    )
    if fitted is None:
        return
    store = run.results.setdefault("table7", {})
    train = power(fitted["pre"]["train"])
    codes_of = {split: power(fitted["pre"][split]) for split in ("db", "official")}
    for name in HASHERS:
        if name == "ITQ":
            continue
        for bits in ITQ_BITS:
            if bits > min(train.shape):  # as ITQ: n_bits <= dimension and <= learning vectors
                run.results["skipped"][f"table 7 {name} {bits} bits"] = f"needs {bits} <= {min(train.shape)}"
            elif run.within_budget(f"table 7 {name} {bits} bits"):
                with run.timer.phase(f"table 7: {name} {bits} bits"), run.recording_warnings(f"table 7 {name}"):
                    hasher = _hasher(name, bits, run.rng_seed).fit(train)
                    codes = hasher.transform(codes_of["db"]), hasher.transform(codes_of["official"])
                    store[f"{name}/{bits}"] = run.evaluate(*codes, metric="hamming")
                write_table7_section(run)


def _hasher(name, bits, seed):
    """Hasher ``name`` of HASHERS at ``bits`` bits, seeded where it takes a seed (KMH: deterministic start)."""
    from inspect import signature

    import selconv

    cls = getattr(selconv, HASHERS[name])
    return cls(bits, random_state=seed) if "random_state" in signature(cls).parameters else cls(bits)
