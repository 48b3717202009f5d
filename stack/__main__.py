"""The `stack` command's entry point, and `python -m stack` (the autoscaler image runs it this way).

The CLI's imports take a moment: a Ctrl-C in it ends the command with one line, not a traceback.
"""

import sys


def main() -> None:
    try:
        from stack.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: nothing was started\n")
        raise SystemExit(130) from None
    run()


if __name__ == "__main__":
    main()
