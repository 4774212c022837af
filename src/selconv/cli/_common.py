"""What every ``selconv`` subcommand shares: the error type, argument types and folder checks."""

from __future__ import annotations

import argparse
import errno
import sys
import tempfile
from pathlib import Path


class CommandError(Exception):
    """A user error (bad path, unusable setting): printed as ``selconv: error: ...``, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``selconv: error: ... (see 'selconv evaluate --help')``), exit status 2."""

    def error(self, message):
        print(f"selconv: error: {message} (see '{self.prog} --help').", file=sys.stderr)
        raise SystemExit(2)


def one_line(error: BaseException) -> str:
    """An exception as one line that says what to fix (OSErrors get the path and a hint)."""
    if isinstance(error, OSError) and error.strerror:  # raised by the OS (custom messages have no strerror)
        where = f" {error.filename}" if error.filename else ""
        fix = {
            "EACCES": "check its permissions or choose another path",
            "EPERM": "check its permissions",
            "ENOSPC": "free some disk space",
            "EROFS": "choose a writable location",
            "ENOTDIR": "a part of the path is a file, not a folder",
            "EEXIST": "a file is in the way of a folder; remove it or choose another path",
            "EISDIR": "it is a folder; give a file",
        }.get(errno.errorcode.get(error.errno, ""), "check the path")
        text = f"{error.strerror}:{where} ({fix})"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def require_writable_dir(path: Path, what: str) -> None:
    """Create `path` if needed and prove it writable, before any work is done."""
    try:
        if path.exists() and not path.is_dir():
            raise CommandError(f"{what} {path} is a file; give a folder (it is created if missing).")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CommandError(
            f"{what} {path} is not a writable folder ({one_line(error)}); choose a folder you can write to."
        ) from None


def require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise CommandError(f"{what} {path} does not exist.")
    if not path.is_dir():
        raise CommandError(f"{what} {path} is not a folder.")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def bit_length(text: str) -> int:
    """A code length: a positive multiple of 8 (codes are packed in bytes)."""
    from selconv.hashing._base import check_packable

    value = positive_int(text)
    try:
        check_packable(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _name_list(text: str, allowed, what: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what} must be among {', '.join(allowed)}; got {text!r}")
    return list(dict.fromkeys(names))


def mask_list(text: str) -> list[str]:
    from selconv.pipelines import MASKS

    return _name_list(text, MASKS, "masks")


def baseline_list(text: str) -> list[str]:
    from selconv.evaluation import BASELINE_LABELS

    return _name_list(text, tuple(BASELINE_LABELS), "baselines")


def add_model_arguments(sub, *, max_size_default: int) -> None:
    """``--preset``, ``--max-size`` and ``--device``: the encoder settings every fitting command takes."""
    from selconv.pipelines import PAPER_SETTINGS

    sub.add_argument(
        "--preset",
        type=int,
        choices=sorted(PAPER_SETTINGS),
        default=512,
        help="final dimension D of the paper's Table 4 (default: %(default)s)",
    )
    sub.add_argument(
        "--max-size",
        type=positive_int,
        default=max_size_default,
        help="resize images so the longest side is this many pixels (default: %(default)s; paper: 1024)",
    )
    sub.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ... (default: auto)")


def add_speed_arguments(sub) -> None:
    """``--batch-size``, ``--compile``, ``--cuda-graphs`` and ``--pad-to-multiple``: how the network runs for this
    command only (:meth:`~selconv.extraction.ConvFeatureExtractor.run_with`); the descriptors change by float
    rounding at most."""
    sub.add_argument(
        "--batch-size", type=positive_int, default=None, metavar="N", help="images per forward pass (default: 8)"
    )
    sub.add_argument(
        "--compile",
        action="store_true",
        help="run the network through torch.compile: faster on a GPU for thousands of photos, after a compilation "
        "of a minute or so",
    )
    sub.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="on a GPU, replay each full batch of a batch shape through a CUDA graph of the network (GPU memory: "
        "about 250 MB per batch shape at --batch-size 64)",
    )
    sub.add_argument(
        "--pad-to-multiple",
        type=positive_int,
        default=None,
        metavar="N",
        help="batch photos of different sizes together, zero-padded (exactly) to a multiple of N pixels; "
        "32 with --compile, --cuda-graphs and --batch-size 64 is the fastest on a GPU (docs/extraction.md, 'Speed')",
    )


def speed_settings(args) -> dict:
    """The run-time settings ``add_speed_arguments`` asked for, as ``run_with`` takes them."""
    settings = {"compile": args.compile, "cuda_graphs": args.cuda_graphs, "pad_to_multiple": args.pad_to_multiple}
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    return settings
