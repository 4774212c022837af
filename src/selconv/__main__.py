"""``python -m selconv``: the same command line as the ``selconv`` script."""

from selconv.cli import main

raise SystemExit(main())
