"""``python -m attnprobe`` (what ``torchrun ... -m attnprobe`` runs)."""

from attnprobe.cli.app import main

main()
