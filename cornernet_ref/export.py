r"""Export to ONNX: the test-time network as a graph of standard operators.

``cornernet-ref export --checkpoint CKPT --out model.onnx`` writes a graph that takes one
normalised image ``image`` of shape ``(1, 3, H, W)`` (``H`` and ``W`` dynamic: any size the
network accepts, see [check_input_size][cornernet_ref.model.CornerNet.check_input_size])
and returns the last stack's six raw maps, named and ordered as
[CornerNetOutput][cornernet_ref.output.CornerNetOutput]: ``tl_heat, br_heat, tl_tag,
br_tag, tl_off, br_off``, each ``(1, ., H_out, W_out)`` with ``H_out = (H - 1) // 4 + 1``.
The decoding and soft-NMS stay in Python (:mod:`cornernet_ref.inference`).

**Corner pooling with standard operators.** The model's corner pooling is an operator of
its own (``cornernet_ref::corner_pool``), which ONNX does not know, and the reference scan,
traced, would fix the number of rows (one step per row). The export computes
the same maxima by *doubling*: with $y^{(0)} = x$ and, for the ``top`` direction (the
maximum of the rows below),

$$ y^{(k+1)}_i = \max\big(y^{(k)}_i,\; y^{(k)}_{i + 2^k}\big), \qquad
y^{(k)}_i = -\infty \text{ for } i \ge L, $$

$y^{(k)}_i$ is the maximum of $x_i, \dots, x_{\min(i + 2^k, L) - 1}$, so after $S$ steps
with $2^S \ge L$ it is the maximum of everything from $i$ to the border, the reference's
value. Each step is one ``Pad`` (with $-\infty$, the identity of the maximum), one
``Slice`` and one ``Max``. The maximum is exact and does not depend on the order in which
it is taken, so the values are those of the reference: equal as numbers (a tie between
$-0$ and $+0$ may keep the other zero) and NaN where the reference has NaN (``Max``, like
``torch.maximum``, propagates it). The tie rule only matters for gradients, which the
graph does not have.

The number of steps is fixed when exporting: ``S = 10`` by default covers maps of up to
$2^{10} = 1024$ cells a side, inputs of up to 4096 pixels (the test canvases of COCO
images are at most 767 pixels a side at scale 1, 1023 at scale 1.5). A larger input would
be pooled over a window of $2^S$ cells only, so the bound is recorded in the file;
``--max-input-side`` raises it. The graph itself checks neither this bound nor the
network's size rule (an unaccepted size fails inside onnxruntime with a shape error);
[OnnxModel][cornernet_ref.export.OnnxModel] checks both before running it.

**Metadata.** The file records the class names, the input normalisation and the size rules
(``metadata_props``, keys ``cornernet_ref.*``), so that ``cornernet-ref predict
--checkpoint model.onnx`` labels and normalises without the checkpoint. The file is written
to a temporary name and renamed: an interrupted export leaves no partial file.

The export uses ``torch.onnx.export(..., dynamo=True)`` (it needs ``onnxscript``);
onnxruntime runs the graph with its default CPU operators.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cornernet_ref.checkpoint import atomic_path
from cornernet_ref.corner_pool import CORNERS, DIRECTIONS, CornerPool
from cornernet_ref.data.image import MEAN_RGB, STD_RGB
from cornernet_ref.errors import InputError, first_line
from cornernet_ref.hourglass import stem_output_size
from cornernet_ref.inference import CanvasGeometry, OutputSource, canvas_batch
from cornernet_ref.output import CornerNetOutput

OUTPUT_NAMES: tuple[str, ...] = CornerNetOutput._fields
INPUT_NAME = "image"
MAX_INPUT_SIDE = 4096  # default bound: maps of up to 1024 cells a side (10 doubling steps)
METADATA_PREFIX = "cornernet_ref."


def doubling_steps(max_length: int) -> int:
    r"""Doubling steps that pool an axis of up to ``max_length`` cells: ``ceil(log2(L))``."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    return (max_length - 1).bit_length()


def doubling_pool(x: Tensor, direction: str, steps: int) -> Tensor:
    r"""One pooling direction of a ``(B, C, H, W)`` tensor by ``steps`` doubling steps.

    $y^{(k+1)}_i = \max(y^{(k)}_i, y^{(k)}_{i \pm 2^k})$, the neighbour $2^k$ cells towards
    the border the pooling comes from (see the module docstring). Equal to
    :func:`cornernet_ref.corner_pool.pool` when the pooled axis has at most ``2**steps``
    cells; forward only (its gradient splits ties, unlike the reference's).
    """
    dim, from_end = DIRECTIONS[direction]
    length = x.shape[dim]
    if not torch.compiler.is_exporting() and length > 2**steps:
        raise ValueError(
            f"{steps} doubling steps pool at most {2**steps} cells, got {length} along "
            f"dimension {dim}"
        )
    # F.pad lists (left, right, top, bottom): the far end of W is index 1, of H index 3.
    padding = [0, 0, 0, 0]
    side = 2 * (3 - dim) + (1 if from_end else 0)
    pooled = x
    for step in range(steps):
        shift = 2**step
        padding[side] = shift
        padded = F.pad(pooled, padding, value=float("-inf"))
        # y_{i + shift} (from_end) or y_{i - shift}: the same length, read `shift` cells over.
        neighbour = padded.narrow(dim, shift if from_end else 0, length)
        pooled = torch.maximum(pooled, neighbour)
    return pooled


class DoublingCornerPool(nn.Module):
    r"""Corner pooling by doubling, in place of a :class:`~cornernet_ref.corner_pool.CornerPool`
    in the exported graph: ``top(a) + left(b)`` (``tl``) or ``bottom(a) + right(b)`` (``br``).

    Args:
        corner: ``"tl"`` or ``"br"``.
        steps: doubling steps; the maps may have up to ``2**steps`` cells a side.
    """

    def __init__(self, corner: str, steps: int) -> None:
        super().__init__()
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {tuple(CORNERS)}, got {corner!r}")
        self.corner, self.steps = corner, steps

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        vertical, horizontal = CORNERS[self.corner]
        return doubling_pool(a, vertical, self.steps) + doubling_pool(b, horizontal, self.steps)

    def extra_repr(self) -> str:
        return f"corner={self.corner!r}, steps={self.steps}"


def with_doubling_pools(model: nn.Module, steps: int) -> nn.Module:
    r"""A copy of ``model`` whose corner pools are :class:`DoublingCornerPool` (same weights)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CornerPool):
                setattr(parent, name, DoublingCornerPool(child.corner, steps))
    return model


class LastStackMaps(nn.Module):
    r"""``images (B, 3, H, W) -> the last stack's six maps`` as a tuple, the graph's outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model(images)[-1])


def input_side_rule(n: int) -> str:
    r"""The sides a network with hourglass depth ``n`` accepts, in words."""
    return f"sides whose stem output (side - 1) // 4 + 1 is a multiple of {2**n}"


def onnx_program(
    module: nn.Module,
    sample: tuple[Tensor, ...],
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[dict[int, Any], ...],
) -> torch.onnx.ONNXProgram:
    r"""``torch.onnx.export`` (the dynamo exporter) of ``module`` traced on ``sample``, the
    dimensions of ``dynamic_shapes`` (one ``{dim: torch.export.Dim}`` per input) left free."""
    with warnings.catch_warnings(), _quiet_exporter_logs():
        # torch 2.13's exporter deep-copies its own pytree leaf spec, whose class is
        # deprecated and warns on every construction; nothing of ours is involved.
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        return torch.onnx.export(
            module,
            sample,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            verbose=False,
        )


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    r"""Hide the exporter's log lines about the torchvision operators it does not register."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    class_names: list[str] | None = None,
    max_input_side: int = MAX_INPUT_SIDE,
) -> Path:
    r"""Write ``model`` (a :class:`~cornernet_ref.model.CornerNet`) as an ONNX graph.

    Args:
        model: the network; exported in eval mode on the CPU, in float32, unchanged.
        out: the ``.onnx`` file; its folder must exist.
        class_names: recorded in the metadata (default: the model's, else ``"0"``, ``"1"``...).
        max_input_side: the largest input side the corner pools cover (rounded up to the
            next power of two of map cells, times 4).

    Returns:
        ``out`` as a Path. Raises ``FileNotFoundError`` if its folder is missing.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder of the ONNX file does not exist: {out.parent}")
    config = model.config
    names = class_names or model.class_names or [str(i) for i in range(config.num_classes)]
    if len(names) != config.num_classes:
        raise ValueError(f"{len(names)} class names for {config.num_classes} classes")
    steps = doubling_steps(stem_output_size(max_input_side))
    exported = LastStackMaps(with_doubling_pools(model, steps)).eval().to("cpu", torch.float32)
    # The smallest sample whose innermost hourglass level has 2 cells: a level of 1 cell would
    # make the exporter treat that size as a constant.
    sample_side = 8 * 2**config.n - 1
    sample = torch.zeros(1, 3, sample_side, sample_side)
    height, width = torch.export.Dim("height"), torch.export.Dim("width")
    program = onnx_program(
        exported,
        (sample,),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({2: height, 3: width},),
    )
    metadata = {
        "class_names": names,
        "normalization": {
            "channels": "RGB",
            "scale": 1 / 255,
            "mean": MEAN_RGB.tolist(),
            "std": STD_RGB.tolist(),
            "formula": "(pixel * scale - mean) / std, per channel",
        },
        "outputs": list(OUTPUT_NAMES),
        "hourglass_depth": config.n,
        "input_sides": input_side_rule(config.n),
        "max_input_side": 4 * 2**steps,
        "model_config": config.to_dict(),
    }
    for key, value in metadata.items():
        program.model.metadata_props[METADATA_PREFIX + key] = json.dumps(value)
    with atomic_path(out) as temporary:
        program.save(temporary, external_data=False)
    return out


class OnnxFileError(InputError, ValueError):
    r"""An ``.onnx`` file that cannot be run: missing, not ONNX, or not written by
    :func:`export_onnx`; the message names the file."""


class OnnxModel:
    r"""An exported file run by onnxruntime, with the metadata :func:`export_onnx` recorded.

    Calling it on normalised images ``(B, 3, H, W)`` (a tensor) runs them one by one and
    returns their maps as a :class:`~cornernet_ref.output.CornerNetOutput` of CPU tensors.

    Attributes:
        class_names: the class names, in heatmap channel order.
        mean, std: the RGB normalisation, applied to pixels scaled to ``[0, 1]``.
        max_input_side: the largest input side the corner pools cover.
        hourglass_depth: ``n``; the accepted sides are those of :func:`input_side_rule`.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise OnnxFileError(f"ONNX file not found: {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own error types
            reason = first_line(error)
            raise OnnxFileError(f"{path}: onnxruntime cannot load it: {reason}") from error
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {}
        for key in ("class_names", "normalization", "hourglass_depth", "max_input_side"):
            if METADATA_PREFIX + key not in props:
                raise OnnxFileError(
                    f"{path}: no '{METADATA_PREFIX}{key}' in its metadata; export the model "
                    "with `cornernet-ref export`"
                )
            self.metadata[key] = json.loads(props[METADATA_PREFIX + key])
        self.path = path
        self.class_names: list[str] = self.metadata["class_names"]
        self.mean = np.asarray(self.metadata["normalization"]["mean"], dtype=np.float32)
        self.std = np.asarray(self.metadata["normalization"]["std"], dtype=np.float32)
        self.max_input_side: int = self.metadata["max_input_side"]
        self.hourglass_depth: int = self.metadata["hourglass_depth"]

    def check_input_size(self, height: int, width: int) -> None:
        r"""``ValueError`` for a size the graph cannot take (the network's rule or the bound)."""
        for name, side in (("height", height), ("width", width)):
            if stem_output_size(side) % 2**self.hourglass_depth:
                raise ValueError(
                    f"{self.path}: input {name} {side} is not accepted; the network takes "
                    f"{input_side_rule(self.hourglass_depth)}"
                )
            if side > self.max_input_side:
                raise ValueError(
                    f"{self.path}: input {name} {side} exceeds {self.max_input_side}, the "
                    "largest side its corner pools cover (export with a larger "
                    "--max-input-side)"
                )

    def __call__(self, images: Tensor) -> CornerNetOutput:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        self.check_input_size(images.shape[2], images.shape[3])
        runs = [
            self.session.run(None, {INPUT_NAME: np.ascontiguousarray(image[None].numpy())})
            for image in images.detach().cpu().float()
        ]
        return CornerNetOutput(
            *(torch.from_numpy(np.concatenate(maps)) for maps in zip(*runs, strict=True))
        )


def onnx_source(model: OnnxModel, images_dir: str | Path) -> OutputSource:
    r"""The maps of each image from an exported file, normalised as its metadata says (the
    ONNX counterpart of :func:`cornernet_ref.inference.model_source`)."""

    def outputs(record: dict, geometry: CanvasGeometry, flip: bool) -> CornerNetOutput:
        return model(
            canvas_batch(images_dir, record, geometry, flip, mean=model.mean, std=model.std)
        )

    return outputs


__all__ = [
    "INPUT_NAME",
    "MAX_INPUT_SIDE",
    "OUTPUT_NAMES",
    "DoublingCornerPool",
    "LastStackMaps",
    "OnnxFileError",
    "OnnxModel",
    "doubling_pool",
    "doubling_steps",
    "export_onnx",
    "input_side_rule",
    "onnx_program",
    "onnx_source",
    "with_doubling_pools",
]
