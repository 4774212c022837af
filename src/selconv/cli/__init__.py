"""The ``selconv`` command line: ``demo`` (bundled sample), ``evaluate`` (any dataset), and ``fit`` / ``index`` /
``search`` for a photo collection.

The commands only parse arguments, call the library (:func:`selconv.evaluation.run_benchmark`,
:mod:`selconv.index.build`) and print. Exit status: 0 success; 1 an internal error (a bug: the
traceback is printed); 2 a user error (bad argument, path, file or data), printed as one line
``selconv: error: ...`` that says what to fix; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import pickle
import sys
import traceback

from selconv.cli._benchmark import add_benchmark_commands
from selconv.cli._collection import add_collection_commands
from selconv.cli._common import CommandError, Parser, one_line

__all__ = ["EXIT_INTERNAL_ERROR", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "CommandError", "build_parser", "main"]

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> Parser:
    """The argument parser of ``selconv`` (subcommands demo, evaluate, fit, index and search)."""
    from selconv import __version__

    parser = Parser(
        prog="selconv",
        description="Selective deep convolutional features for image retrieval (Do, Hoang et al.). "
        "Exit status: 0 success, 1 internal error (a bug), 2 user error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"selconv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,evaluate,fit,index,search}")
    add_benchmark_commands(commands)
    add_collection_commands(commands)
    return parser


def main(argv=None) -> int:
    """Run ``selconv`` with `argv` (default: ``sys.argv[1:]``); return the exit status.

    0: success; 1: an internal error (a bug; its traceback is printed); 2: a user error (bad
    argument, path, file or data), printed as one line ``selconv: error: ...`` that says what to
    fix; 130: interrupted.
    """
    from selconv.cli import _benchmark, _collection

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help / --version (0), or an argument error already printed (2)
        return done.code if isinstance(done.code, int) else 0
    command = {
        "demo": _benchmark.demo,
        "evaluate": _benchmark.evaluate,
        "fit": _collection.fit,
        "index": _collection.index,
        "search": _collection.search,
    }[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        print("\nselconv: interrupted; conv maps computed so far are cached, rerun to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if not _is_user_error(error):
            traceback.print_exc()
            print("selconv: internal error (a bug): please report it with the traceback above.", file=sys.stderr)
            return EXIT_INTERNAL_ERROR
        # Loaders and estimators raise these with messages naming the file or argument.
        print(f"selconv: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _is_user_error(error: Exception) -> bool:
    from selconv.extraction.weights import WeightsNotFoundError

    return isinstance(error, (CommandError, OSError, ValueError, pickle.UnpicklingError, WeightsNotFoundError))
