"""`python -m stack.cli`: the `stack` command."""

from stack.cli import main

main()
