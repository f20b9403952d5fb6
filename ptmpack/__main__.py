"""``python -m ptmpack``: the same program as the ``ptmpack`` console script."""

from ptmpack.cli import main

main()
