"""Train a demo run's stage 4 again with other settings, starting from another run's stages 1-3.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/demo_variant.py BASE DST NEGATIVES [FIELD=VALUE ...]

BASE is a finished `jasper-jax demo` folder. DST gets a copy of it without stage 4, stage 5, the export,
the pairs and their evaluations. The demo then runs in DST with `--stages 1,2,3,4`, `NEGATIVES` mined hard
negatives per title and the config overrides given (`stages.stage4.steps=45`). Stages 1-3 are kept, so the
overrides must repeat the ones BASE was trained with (the trainer refuses a finished stage with other
settings). DST's report then compares stage 4 with BASE's stages on the same footing
(benchmarks/RESULTS.md, "the demo in its budget").
"""

import shutil
import sys
from pathlib import Path

from jasper_jax.demo import DemoSettings, run_demo

NOT_COPIED = ("stage4", "stage5", "export", "pairs", "stage4.json", "stage5.json", "export_pytorch.json", "report")


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit(__doc__)
    base, destination, negatives = Path(argv[0]), Path(argv[1]), int(argv[2])
    if not destination.exists():
        shutil.copytree(base, destination, ignore=shutil.ignore_patterns(*NOT_COPIED))
    settings = DemoSettings(
        out=destination, overrides=argv[3:], stages=[1, 2, 3, 4], pair_negatives=negatives, progress=False
    )
    run_demo(settings)


if __name__ == "__main__":
    main(sys.argv[1:])
