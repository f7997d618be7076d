"""``python -m gatewatch`` runs the command line."""

from gatewatch.cli import main

main()
