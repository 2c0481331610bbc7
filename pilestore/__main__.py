"""`python -m pilestore` runs the command line."""

from .cli import main

main()
