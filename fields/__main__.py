"""`python -m fields` runs the command line (what `torchrun ... -m fields train` needs)."""

from fields.cli import main

main()
