"""What several test files share: the repository's scripts loaded as modules, and the tiny
training configuration that runs a few iterations in seconds on a CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from cornernet_ref.config import TrainConfig
from cornernet_ref.data.augment import AugmentConfig
from cornernet_ref.model import ModelConfig
from cornernet_ref.targets import TargetConfig

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, path: Path) -> ModuleType:
    """Import the file ``path`` (a script outside the package) as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def docs_hooks() -> ModuleType:
    """The site's build hook, ``docs/hooks.py``."""
    return load_script("docs_hooks", REPO / "docs" / "hooks.py")


# Two stacks of a 2-level hourglass 8 channels wide on 63-pixel shapes: every part of the
# training path, at a few iterations per second.
TINY_TRAINING = TrainConfig(
    name="tiny",
    model=ModelConfig(
        n=2, nstack=2, dims=(8, 8, 8), modules=(1, 1, 1), cnv_dim=8, pre_dim=8, pool_dim=8
    ),
    augment=AugmentConfig(input_size=63, border=16),
    output_size=16,
    targets=TargetConfig(max_objects=8),
    shapes_train=12,
    shapes_val=0,
    shapes_size=56,
    batch_size=4,
    max_iters=3,
    lr=1e-3,
    workers=0,
    precision="fp32",
    device="cpu",
    log_every=1,
    checkpoint_every=1000,
)
