"""Golden plans of the examples: `python tests/golden.py` regenerates tests/golden/.

Each example is copied without generated files (a trained model.pkl differs
run to run) and planned for Compose (on a host with 2 GPUs) and for Nomad.
Review the diff of tests/golden/ like code.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
GOLDEN = HERE / "golden"
GENERATED = shutil.ignore_patterns("model.pkl", ".stack", "__pycache__")
HOST_GPUS = 2


def example_names() -> list[str]:
    return sorted(p.parent.name for p in EXAMPLES.glob("*/stack.yaml"))


def render(name: str, work: Path) -> dict[str, str]:
    """Every planned file of one example, keyed by target/filename."""
    sys.path.insert(0, str(HERE.parent))
    from stack.spec import load_spec
    from stack.targets.compose.plan import plan as plan_compose
    from stack.targets.nomad.plan import plan as plan_nomad

    project = work / name
    shutil.copytree(EXAMPLES / name, project, ignore=GENERATED)
    loaded = load_spec(project)
    compose = plan_compose(loaded, project / ".stack/plan/compose", host_gpus=HOST_GPUS)
    nomad = plan_nomad(loaded)
    files = {f"compose/{k}": v for k, v in compose.files.items()}
    files.update({f"nomad/{k}": v for k, v in nomad.files.items()})
    return files


def main() -> None:
    import tempfile

    shutil.rmtree(GOLDEN, ignore_errors=True)
    for name in example_names():
        with tempfile.TemporaryDirectory() as work:
            for relative, content in render(name, Path(work)).items():
                path = GOLDEN / name / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
