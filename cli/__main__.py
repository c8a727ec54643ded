"""``python -m equiaudit.cli`` (for ``torchrun`` and environments without the console script)."""

from . import main

main()
