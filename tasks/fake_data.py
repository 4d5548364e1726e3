"""Random images saved where a real dataset keeps them: the tasks' ``fake_dataset`` builds a
tiny copy of its dataset's layout from these, so the paper path runs without the data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def random_image(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    """A (width, height) RGB image of uniform noise at ``path`` (format from its suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
