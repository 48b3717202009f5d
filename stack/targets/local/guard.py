"""`python -m stack.targets.local.guard PARENT_PID -- COMMAND...`: run COMMAND, dying with its parent.

It asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG, kept
across exec), checks the parent is still the one it was started by (it may
have died already), then becomes COMMAND. This replaces `preexec_fn`, which
is unsafe in a process that runs threads. Linux only; elsewhere it just execs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, separator, *command = argv
    if separator != "--" or not command:
        sys.exit("usage: python -m stack.targets.local.guard PARENT_PID -- COMMAND...")
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if os.getppid() != int(parent):  # the parent died before the death signal was armed
        sys.exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
