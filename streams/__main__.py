"""``python -m streams`` is the ``wardwatch`` command."""

from .cli import main

main()
