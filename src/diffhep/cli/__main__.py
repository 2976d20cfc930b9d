"""``python -m diffhep.cli``."""

from . import main

main()
