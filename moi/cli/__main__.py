"""``python -m moi.cli``: the ``moi`` command."""

from moi.cli import main

main()
