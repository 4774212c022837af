"""Merge of partial runs (``--merge-json``): no computation, no data folder.

Results merge key by key (a phase's results of several runs combine; later files win on the same key); a
skipped entry, or a failed cell's error, is dropped where another file has its result; the runs that computed a
phase are all named; wall times and warnings are concatenated, and the complete report is written from the
merged results.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .options import parse_args
from .report.beyond import (
    write_options_section,
    write_robust_section,
    write_table3_section,
    write_table7_section,
    write_target_section,
)
from .report.discussion import write_discussion, write_header, write_timings
from .report.learning import write_baseline_section, write_domain_section, write_protocols_section
from .report.markdown import command_line
from .report.tables import (
    write_alpha_section,
    write_framework_section,
    write_hypercolumn_section,
    write_itq_section,
    write_masks_section,
    write_table9_section,
)
from .run import Run
from .settings import PHASE_NAMES


class _FixedTimer:
    """The PhaseTimer interface over recorded wall times (a merge measures nothing)."""

    def __init__(self, phases, total):
        self.phases, self.total = phases, total

    def elapsed(self):
        return self.total


# Skipped-entry key -> where its result lives: a skipped entry is dropped when the merge has that result.
_SKIP_RESULTS = (
    (r"framework-training", lambda r, m: any(re.fullmatch(r"training/\w+/(512|1024)", k) for k in r["framework"])),
    (r"framework-database", lambda r, m: any(k.startswith("database/") for k in r["framework"])),
    (
        r"dimensions",
        lambda r, m: any(
            re.fullmatch(r"training/\w+/\d+", k) and k.split("/")[2] not in ("512", "1024") for k in r["framework"]
        ),
    ),
    (r"baselines|hypercolumns|table9|domain|protocols|robust|table3|table7", lambda r, m: bool(r.get(m[0]))),
    (r"rerank", lambda r, m: bool(r.get("options", {}).get("single-scale"))),
    (r"multiscale", lambda r, m: bool(r.get("options", {}).get("multi-scale"))),
    (r"([\w-]+) fit (\w+) (\d+) (.+)", lambda r, m: f"{m[2]}/{m[3]}/{m[4]}" in r.get("options", {}).get(m[1], {})),
    (r"([\w-]+) baseline (\w+)", lambda r, m: m[2] in r.get("options", {}).get(m[1], {})),
    (
        r"robust\[([\w-]+)\] fit (\w+) (\d+) (.+)",
        lambda r, m: f"{m[2]}/{m[3]}/{m[4]}" in r.get("robust", {}).get(m[1], {}),
    ),
    (r"table 3 (.+) (\w+)", lambda r, m: f"{m[1]}/{m[2]}" in r.get("table3", {})),
    (r"table 7 (\w+) (\d+) bits", lambda r, m: f"{m[1]}/{m[2]}" in r.get("table7", {})),
    (r"(training|database) fit (\w+) (\d+)", lambda r, m: f"{m[1]}/{m[2]}/{m[3]}" in r["framework"]),
    (r"baseline (\w+)", lambda r, m: m[1] in r.get("baselines", {})),
    (r"table 9 (\w+)", lambda r, m: m[1] in r.get("table9", {})),
    (r"hypercolumns (.+) (\d+)", lambda r, m: f"{m[1]}/{m[2]}" in r.get("hypercolumns", {})),
    (r"ITQ (\d+) bits", lambda r, m: m[1] in r.get("itq", {})),
    (
        r"domain\[([\w-]+)\] fit (\w+) (\d+)",
        lambda r, m: f"{m[2]}/{m[3]}" in r.get("domain", {}).get(m[1], {}).get("framework", {}),
    ),
    (r"domain\[([\w-]+)\] baseline (\w+)", lambda r, m: m[2] in r.get("domain", {}).get(m[1], {}).get("baselines", {})),
    (r"domain\[([\w-]+)\] ITQ (\d+) bits", lambda r, m: m[2] in r.get("domain", {}).get(m[1], {}).get("itq", {})),
)


def _has_result(results, skipped_key) -> bool:
    for pattern, present in _SKIP_RESULTS:
        match = re.fullmatch(pattern, skipped_key)
        if match:
            return present(results, match)
    return False


def _deep_merge(into: dict, other: dict) -> dict:
    """Nested dicts merged key by key; on the same leaf key the later value wins."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def _legacy_data_summary(results) -> dict:
    """Counts for a JSON written before results['data'] existed, recovered from what it recorded.

    Query counts from any evaluation; training / database sizes from the rotation's warning of a fit on
    the training photos / the database ('fitted on N vectors') or a dimension entry's n_train.
    """
    data = {"notes": []}
    evaluations = list(results.get("framework", {}).values()) + list(results.get("table9", {}).values())
    for entry in evaluations:
        data["n_official"] = entry["official-10"]["n_queries"]
        data["n_loo"] = entry["loo-landmark"]["n_queries"]
    for entry in results.get("framework", {}).values():
        if "n_train" in entry:
            data["n_training"] = entry["n_train"]
    for label, messages in results.get("warnings", {}).items():
        for message in messages:
            fitted_on = re.search(r"fitted on (\d+) vectors", message)
            if fitted_on and label.startswith("fit training"):
                data.setdefault("n_training", int(fitted_on[1]))
            elif fitted_on and (label.startswith("fit database") or label.startswith("table 9")):
                data.setdefault("n_database", int(fitted_on[1]))
    return data


def merge_json_files(paths) -> tuple:
    """(merged results, [(path, results)], timer, warnings) of partial runs' paper_results.json, later files winning."""
    loaded = []
    for path in paths:
        try:
            loaded.append((Path(path), json.loads(Path(path).read_text())))
        except (OSError, ValueError) as error:
            raise SystemExit(f"--merge-json: cannot read {path}: {error}") from None
    merged, skipped, errors = {}, {}, {}
    phases, totals, warnings_, phase_runs = {}, [], {}, {}
    for number, (_path, results) in enumerate(loaded, start=1):
        results = dict(results)
        data = results.pop("data", None) or _legacy_data_summary(results)
        merged.setdefault("data", {}).update(data)
        skipped.update(results.pop("skipped", {}))
        errors.update(results.pop("errors", {}))
        for label, messages in results.pop("warnings", {}).items():
            warnings_.setdefault(label, set()).update(messages)
        for name, seconds in results.pop("wall_times_s", {}).items():
            phases[f"run {number}: {name}"] = seconds
        totals.append(results.pop("total_s", None))
        results.pop("command", None)
        results.pop("merged_from", None)
        for phase, computed_by in results.pop("phase_runs", {}).items():
            runs = phase_runs.setdefault(phase, [])
            for entry in computed_by if isinstance(computed_by, list) else [computed_by]:
                if entry not in runs:
                    runs.append(entry)
        merged["machine"] = results.pop("machine", merged.get("machine", {}))  # the device's, not this machine's
        _deep_merge(merged, results)
    merged.setdefault("framework", {})
    merged["skipped"] = {k: v for k, v in skipped.items() if not _has_result(merged, k)}
    # A failed cell's error (e.g. 'table 3 FV max') goes where another run has the cell; a phase's stays.
    merged["errors"] = {k: v for k, v in errors.items() if k in PHASE_NAMES or not _has_result(merged, k)}
    if phase_runs:  # one run: its record, as a run writes it; several: the list, in merge order
        merged["phase_runs"] = {phase: runs[0] if len(runs) == 1 else runs for phase, runs in phase_runs.items()}
    merged["merged_from"] = [{"file": str(path), "command": r.get("command", [])} for path, r in loaded]
    total = None if any(t is None for t in totals) else float(sum(totals))
    return merged, loaded, _FixedTimer(phases, total), warnings_


def run_merge(args, argv) -> Path:
    """Write the complete report (md, json, figures) of several partial runs' JSON files into ``args.out``."""
    merged, loaded, timer, warnings_ = merge_json_files(args.merge_json)
    commands = [r.get("command", []) for _, r in loaded]
    # Report settings (image size, sweep dimensions, Table 9 preset, precision) are the device runs'.
    device_args = (
        parse_args(commands[-1]) if commands[-1] else parse_args(["--out", str(args.out), "--merge-json", "x"])
    )
    device_args.sweep_dims = tuple(sorted({d for c in commands if c for d in parse_args(c).sweep_dims}))
    device_args.out, device_args.merge_json, device_args.cache_dir = args.out, args.merge_json, None
    run = Run(device_args)
    run.timer, run.warnings = timer, warnings_
    run.results = merged
    run.results.setdefault("settings", {"n_jobs": device_args.n_jobs or merged["machine"].get("cpu_count", "?")})
    run.results["command"] = argv
    write_header(
        run,
        [
            *[
                (
                    f"Device run {i} on {r.get('machine', {}).get('gpu', 'an unrecorded GPU')} (`{path}`)",
                    command_line(r.get("command", [])),
                )
                for i, (path, r) in enumerate(loaded, start=1)
            ],
            ("Merged (no computation) by", command_line(argv, prefix=".venv/bin/python")),
        ],
    )
    _write_sections(run, merged)
    run.save_json()
    print(f"results: {run.report.path}", flush=True)
    return run.report.path


def _write_sections(run, merged):
    """Every section the merged results have data for (a run's phases write their own as they go)."""
    if "mask_share" in merged:
        write_masks_section(run)
    write_framework_section(run)  # and the dimension section
    write_alpha_section(run)
    if merged.get("hypercolumns") or "pool5_vs_maxpooled_conv5_3_max_rel_diff" in merged:
        write_hypercolumn_section(run)
    if merged.get("itq"):
        write_itq_section(run)
    if merged.get("baselines"):
        write_baseline_section(run)
    if merged.get("table9"):
        write_table9_section(run)
    write_domain_section(run)
    write_protocols_section(run)
    for write in (
        write_options_section,
        write_robust_section,
        write_target_section,
        write_table3_section,
        write_table7_section,
    ):
        write(run)  # each writes nothing without its data
    write_discussion(run)
    write_timings(run)
