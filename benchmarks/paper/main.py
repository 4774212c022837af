"""The run: load the data, extract and mask once, then every phase in order of importance within the budget."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from .experiments.baselines import phase_baselines
from .experiments.beyond import phase_multiscale, phase_rerank, phase_robust
from .experiments.features import phase_extract, phase_masks
from .experiments.framework import phase_dimensions, phase_framework_database, phase_framework_training, phase_table9
from .experiments.hypercolumns import phase_hypercolumns
from .experiments.learning import phase_domain, phase_protocols
from .experiments.paper_tables import phase_table3, phase_table7
from .merge import run_merge
from .options import parse_args
from .plumbing import machine_info
from .protocols import Data
from .report.discussion import write_discussion, write_header, write_timings
from .report.markdown import command_line
from .run import Run

# After extraction and masking, in order of importance (a phase that would start past --budget-s is skipped);
# the names are settings.PHASE_NAMES, which --skip's help lists.
PHASES = {
    "framework-training": phase_framework_training,
    "baselines": phase_baselines,
    "framework-database": phase_framework_database,
    "dimensions": phase_dimensions,
    "hypercolumns": phase_hypercolumns,
    "table9": phase_table9,
    "domain": phase_domain,
    "protocols": phase_protocols,
    "rerank": phase_rerank,
    "robust": phase_robust,
    "multiscale": phase_multiscale,
    "table3": phase_table3,
    "table7": phase_table7,
}
# Phases whose report sections name the run that computed them (results["phase_runs"]).
PROVENANCE = ("rerank", "robust", "multiscale", "table3", "table7")


def main(argv=None) -> Path:
    """Run every experiment; return the path of ``paper_results.md``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.merge_json:
        return run_merge(args, argv)
    run = Run(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(PHASES)
    if unknown:
        raise SystemExit(f"--skip: unknown phase(s) {sorted(unknown)}; known: {', '.join(PHASES)}")
    run.results["machine"] = machine_info()
    run.results["command"] = argv
    run.results["settings"] = {"n_jobs": run.n_jobs}
    with run.timer.phase("load data"):
        run.data = Data(args)
    run.results["data"] = run.data.summary()
    write_header(run, [("Command", command_line(argv))])
    phase_extract(run)  # times itself, per split
    with run.timer.phase("masks (all four, with shares and Fig. 3b statistic)"):
        phase_masks(run)
    for name, function in PHASES.items():
        if name in skip:
            run.results["skipped"][name] = "--skip"
        elif name == "domain" and args.train_source == "generic":
            run.results["skipped"][name] = "--train-source generic (every other phase learns on the generic photos)"
        elif run.over_budget():
            run.results["skipped"][name] = f"time budget ({args.budget_s:.0f}s) reached before it started"
        else:
            _run_phase(run, name, function)
    write_discussion(run)
    write_timings(run)
    run.save_json()
    print(f"results: {run.report.path}", flush=True)
    return run.report.path


def _run_phase(run, name, function):
    """One phase, its failure recorded (one failed experiment must not lose the others' results), then saved."""
    if name in PROVENANCE:
        machine = run.results["machine"]
        run.results.setdefault("phase_runs", {})[name] = {
            "command": run.results["command"],
            "gpu": machine.get("gpu"),
            "cpu_count": machine.get("cpu_count"),
        }
    try:
        function(run)
    except Exception as error:
        traceback.print_exc()
        run.results["errors"][name] = f"{type(error).__name__}: {error}"
    write_discussion(run)
    write_timings(run)
    run.save_json()
