"""The background supervisor of `stack up --local`: the local stack's controller, as a process.

    python -m stack.targets.local.supervisor PATH/TO/stack.yaml

It is the control-plane runtime (stack.control.runtime) with the local target's adapters
(stack.targets.local.adapters); `stack up --local` starts it, `stack down --local` stops it through its
control API.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from stack.control.runtime import ControlSettings, run_control
from stack.errors import StackError
from stack.targets import open_control
from stack.targets.local.settings import LocalSettings

LOGGER = logging.getLogger("stack.targets.local")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    own = LocalSettings(Path(args[0]).resolve())
    try:
        asyncio.run(run_control(open_control("local", ControlSettings(), own)))
    except StackError as exc:
        LOGGER.error(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
