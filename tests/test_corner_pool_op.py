"""Corner pooling as a PyTorch operator (``torch.ops.cornernet_ref.corner_pool``): PyTorch's
own checks of the registration (``torch.library.opcheck``), the autograd formula against the
reference backend, ``torch.compile(fullgraph=True)`` of CornerNet against eager, and
``torch.export`` keeping one node per corner pool.

opcheck runs the operator eagerly, on fake tensors and through AOT autograd, and fails when
the fake implementation disagrees with the real one (shape, dtype, strides), when the
autograd formula is missing or wrong for the schema, or when the two give different
results. It runs on the package's operators (the reference on the CPU, the kernel on a
GPU) and on the same operators over the CUDA kernel built for the CPU.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers import emulated_ops
from hypothesis import given
from hypothesis import strategies as st

from cornernet_ref.corner_pool import CornerPool, corner_pool, op, pool
from cornernet_ref.corner_pool.op import OPS, CornerPoolOps
from cornernet_ref.corner_pool.reference import REFERENCE_KERNELS, SUM_BLOCK
from cornernet_ref.model import CornerNet, ModelConfig

HAS_CUDA = torch.cuda.is_available()
# A CornerNet of two stacks, 8 channels wide: four corner pools in training, two at test time.
TINY = ModelConfig(
    num_classes=3,
    n=2,
    nstack=2,
    dims=(8, 8, 8),
    modules=(1, 1, 1),
    cnv_dim=8,
    pre_dim=8,
    pool_dim=8,
)
# Operators of the reference's scan: none of them may appear where the operator stands.
SCAN_OPERATORS = {"aten.where.self", "aten.gt.Tensor", "aten.isnan.default", "aten.stack.default"}

pytestmark = pytest.mark.usefixtures("one_thread")


def operator_arguments(
    device: str, dtype: torch.dtype, layout: str, maps: str, grad_of: str, seed: int = 0
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(a, b)`` of shape (2, 3, 5, 7) with ties; ``maps``: which are given (``"ab"``,
    ``"a"``, ``"b"``); ``grad_of``: which require a gradient."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for name in "ab":
        x = torch.randint(-2, 3, (2, 3, 5, 7), generator=generator).to(dtype).to(device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        tensors.append(x.requires_grad_(name in grad_of) if name in maps else None)
    return tensors[0], tensors[1]


OPCHECK_CASES = [
    ("float32", "contiguous", "ab", "ab"),
    ("float32", "contiguous", "ab", "a"),
    ("float32", "contiguous", "b", "b"),
    ("float32", "channels_last", "a", "a"),
    ("float64", "channels_last", "ab", "b"),
    ("float64", "contiguous", "ab", ""),
    ("bfloat16", "contiguous", "ab", "ab"),
    ("bfloat16", "channels_last", "b", "b"),
]


def opcheck_operators(ops: CornerPoolOps, device: str, case: tuple[str, ...], reverse: bool):
    dtype_name, layout, maps, grad_of = case
    dtype = getattr(torch, dtype_name)
    a, b = operator_arguments(device, dtype, layout, maps, grad_of)
    torch.library.opcheck(ops.forward, (a, b, reverse, SUM_BLOCK))
    grad = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(1)).to(dtype)
    detached = [None if x is None else x.detach() for x in (a, b)]
    torch.library.opcheck(ops.backward, (*detached, grad.to(device), reverse, SUM_BLOCK))


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids="-".join)
def test_opcheck_on_the_cpu(case, reverse):
    opcheck_operators(OPS, "cpu", case, reverse)


@pytest.mark.parametrize("case", OPCHECK_CASES[::3], ids="-".join)
def test_opcheck_of_the_kernel_built_for_the_cpu(case):
    opcheck_operators(emulated_ops(), "cpu", case, reverse=True)


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids="-".join)
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_opcheck_on_the_gpu(case, reverse):
    opcheck_operators(OPS, "cuda", case, reverse)


# --- The autograd formula -----------------------------------------------------------------


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(0, 2), st.integers(1, 2), st.integers(1, 6), st.integers(1, 6)),
    corner=st.sampled_from(["tl", "br"]),
    grad_of=st.sampled_from(["ab", "a", "b"]),
)
def test_operator_equals_the_reference_backend(seed, shape, corner, grad_of):
    """Values and gradients bit for bit; a map that does not require a gradient gets none."""
    generator = torch.Generator().manual_seed(seed)
    a, b = torch.randint(-2, 3, (2, *shape), generator=generator).float()  # ties
    grad = torch.randn(shape, generator=generator)
    results = []
    for backend in (None, "reference"):
        a_in, b_in = (
            a.clone().requires_grad_("a" in grad_of),
            b.clone().requires_grad_("b" in grad_of),
        )
        out = corner_pool(a_in, b_in, corner, backend=backend)
        out.backward(grad)
        results.append((out.detach(), a_in.grad, b_in.grad))
    (out, grad_a, grad_b), expected = results
    assert torch.equal(out, expected[0])
    for actual, wanted, name in ((grad_a, expected[1], "a"), (grad_b, expected[2], "b")):
        assert (actual is None) == (name not in grad_of)
        assert actual is None or torch.equal(actual, wanted)


@pytest.mark.parametrize("direction", ["top", "bottom", "left", "right"])
def test_one_direction_is_the_operator_with_one_map(direction):
    x = torch.randint(-2, 3, (2, 3, 4, 6), generator=torch.Generator().manual_seed(2)).float()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    grads = []
    for backend in (None, "reference"):
        leaf = x.clone().requires_grad_()
        out = pool(leaf, direction, backend=backend)
        out.backward(grad)
        grads.append((out.detach(), leaf.grad))
    assert all(torch.equal(p, q) for p, q in zip(*grads, strict=True))


class RecordingKernels:
    """The reference kernels, recording which maps each backward was given."""

    def __init__(self) -> None:
        self.backward_maps: list[tuple[bool, bool]] = []

    def forward(self, a, b, reverse):
        return REFERENCE_KERNELS.forward(a, b, reverse)

    def backward(self, a, b, grad, reverse, sum_block):
        self.backward_maps.append((a is not None, b is not None))
        return REFERENCE_KERNELS.backward(a, b, grad, reverse, sum_block)


def test_a_map_that_needs_no_gradient_is_not_scanned():
    recording = RecordingKernels()
    ops = CornerPoolOps("cornernet_ref_recording", {"cpu": lambda: recording})
    a, b = torch.randn(2, 1, 2, 3, 4)
    for grad_of, expected in (("a", (True, False)), ("b", (False, True)), ("ab", (True, True))):
        a_in, b_in = (
            a.clone().requires_grad_("a" in grad_of),
            b.clone().requires_grad_("b" in grad_of),
        )
        ops.corner_pool(a_in, b_in, "tl").sum().backward()
        assert recording.backward_maps[-1] == expected
    assert len(recording.backward_maps) == 3


@pytest.mark.skipif(HAS_CUDA, reason="checks the fallback where no kernel can be built")
def test_cuda_without_a_kernel_warns_once_and_runs_the_reference(monkeypatch):
    monkeypatch.setattr(op, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="needs a GPU.*falls back to the reference"):
        assert op.cuda_kernels() is REFERENCE_KERNELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert op.cuda_kernels() is REFERENCE_KERNELS


# --- torch.compile and torch.export -------------------------------------------------------


def run_and_differentiate(model: torch.nn.Module, images: torch.Tensor):
    """Every output map of the model, and the gradient of every parameter for a fixed
    weighted sum of the outputs."""
    outputs = [m for stack in model(images) for m in stack]
    weights = torch.Generator().manual_seed(5)
    loss = sum((m * torch.randn(m.shape, generator=weights).to(m.device)).sum() for m in outputs)
    loss.backward()
    return [m.detach() for m in outputs], [p.grad for p in model.parameters()]


def test_compile_fullgraph_equals_eager():
    """The whole model in one graph (``fullgraph=True`` fails on any break), with the four
    corner pools as operators; outputs and gradients equal to eager (the compiled graph runs
    the same kernels; ``aot_eager`` skips code generation, which takes minutes here)."""
    torch.manual_seed(0)
    eager = CornerNet(TINY).train()
    compiled = copy.deepcopy(eager)  # its own batch norm statistics, updated once per call
    images = torch.randn(2, 3, 31, 31, generator=torch.Generator().manual_seed(4))
    expected = run_and_differentiate(eager, images)
    actual = run_and_differentiate(
        torch.compile(compiled, fullgraph=True, backend="aot_eager"), images
    )
    for got, wanted in zip(actual, expected, strict=True):
        assert len(got) == len(wanted)
        for x, y in zip(got, wanted, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


# Dynamo itself instantiates torch.autograd.Function to trace RowPool, and PyTorch warns.
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
)
@pytest.mark.parametrize("corner", ["tl", "br"])
def test_the_reference_backend_compiles_and_gives_the_same_bits(corner):
    """The reference scan, traced operation by operation (the rows unrolled), in one graph."""
    a, b = torch.randint(-2, 3, (2, 2, 3, 5, 6), generator=torch.Generator().manual_seed(6))
    grad = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(7))

    def function(a, b):
        return corner_pool(a, b, corner, backend="reference")

    results = []
    for run in (function, torch.compile(function, fullgraph=True, backend="aot_eager")):
        a_in, b_in = a.float().requires_grad_(), b.float().requires_grad_()
        out = run(a_in, b_in)
        out.backward(grad)
        results.append((out.detach(), a_in.grad, b_in.grad))
    assert all(torch.equal(x, y) for x, y in zip(*results, strict=True))


def test_export_keeps_one_operator_per_corner_pool():
    """At test time only the last stack predicts: its two corner pools are two nodes of the
    exported graph, with no trace of the scan, and the exported program computes the same."""
    torch.manual_seed(0)
    model = CornerNet(TINY).eval()
    images = torch.randn(1, 3, 31, 31, generator=torch.Generator().manual_seed(8))
    exported = torch.export.export(model, (images,))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    last_stack = (model.top_left[-1], model.bottom_right[-1])
    pools = [m for head in last_stack for m in head.modules() if isinstance(m, CornerPool)]
    assert len(pools) == 2
    assert targets.count("cornernet_ref.corner_pool.default") == len(pools)
    assert not SCAN_OPERATORS & set(targets)
    for got, wanted in zip(exported.module()(images)[0], model(images)[0], strict=True):
        assert torch.equal(got, wanted)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_compile_with_the_kernel_equals_eager():
    """On the GPU the operator runs the fused kernel inside the compiled graph."""
    torch.manual_seed(0)
    eager = CornerNet(TINY).cuda().train()
    compiled = copy.deepcopy(eager)
    images = torch.randn(2, 3, 31, 31, device="cuda")
    expected = run_and_differentiate(eager, images)
    actual = run_and_differentiate(torch.compile(compiled, fullgraph=True), images)
    for got, wanted in zip(actual, expected, strict=True):
        for x, y in zip(got, wanted, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_compile_of_the_cuda_backend_equals_eager():
    """``backend="cuda"`` checks that the kernel builds, then calls the operator: one graph."""
    a, b = torch.randint(0, 3, (2, 2, 8, 128, 130), device="cuda").float()

    def function(a, b):
        return corner_pool(a, b, "br", backend="cuda")

    compiled = torch.compile(function, fullgraph=True)
    assert torch.equal(compiled(a, b), function(a, b))


@pytest.mark.parametrize("call", ["pool", "corner_pool", "module"])
def test_a_bad_sum_block_is_one_clear_error(call):
    """``sum_block`` is checked where the user passes it, before any tracing or kernel."""
    a, b = torch.randn(2, 1, 2, 3, 40)
    with pytest.raises(ValueError, match="sum_block must be 0 or a positive multiple of 16"):
        if call == "pool":
            pool(a, "left", sum_block=24)
        elif call == "corner_pool":
            corner_pool(a, b, "tl", sum_block=-16)
        else:
            CornerPool("br", sum_block=8)
