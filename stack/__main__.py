"""`python -m stack` is the `stack` command (the autoscaler image runs it this way)."""

from stack.cli import main

main()
