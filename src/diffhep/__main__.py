"""``python -m diffhep``."""

from .cli import main

main()
