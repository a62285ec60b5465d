"""One shapes image through each step of the official training augmentation, boxes drawn."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cornernet_ref.data.augment import (
    AugmentConfig,
    clip_boxes,
    color_jitter_,
    horizontal_flip,
    lighting_,
    random_crop,
    resize,
)
from cornernet_ref.data.shapes import render_shapes_image


def main(out: Path) -> None:
    image, boxes, labels = render_shapes_image(0, 4, size=120)
    config = AugmentConfig(input_size=127, border=32)
    rng = np.random.default_rng(3)
    steps = [("original 120 x 120", image.astype(np.float32), boxes)]
    crop_side = int(config.input_size * 0.7)
    cropped, crop_boxes = random_crop(image.astype(np.float32), boxes, crop_side, 32, rng)
    steps.append((f"crop {crop_side} x {crop_side} (scale 0.7)", cropped, crop_boxes))
    resized, resized_boxes = resize(cropped, crop_boxes, config.input_size)
    resized_boxes, kept = clip_boxes(resized_boxes, labels, 127, 127)
    steps.append(("resize to 127, clip boxes", resized, resized_boxes))
    flipped, flipped_boxes = horizontal_flip(resized, resized_boxes)
    steps.append(("horizontal flip", flipped, flipped_boxes))
    coloured = flipped / 255.0
    color_jitter_(coloured, rng, 0.4)
    lighting_(coloured, rng, 0.1)
    steps.append(("colour jitter + PCA lighting", coloured * 255.0, flipped_boxes))
    figure, axes = plt.subplots(1, len(steps), figsize=(3 * len(steps), 3.3))
    for axis, (title, picture, picture_boxes) in zip(axes, steps, strict=True):
        axis.imshow(np.clip(picture, 0, 255).astype(np.uint8))
        for x0, y0, x1, y1 in picture_boxes:
            axis.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime"))
        axis.set_title(title, fontsize=9)
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
