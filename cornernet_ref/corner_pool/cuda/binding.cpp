// PyTorch binding of the corner pooling kernels (corner_pool.cu): checks the tensors, makes
// them contiguous, allocates the outputs and the forward's carries (for wide rows and split
// columns only), picks the kernel for the dtype. It includes no CUDA header, so it compiles
// against any PyTorch build; the caller passes the CUDA stream to run on
// (torch.cuda.current_stream().cuda_stream).
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "corner_pool.h"

namespace {

using MaybeTensor = std::optional<at::Tensor>;

// The map that is present (a, or b when a is absent), checked.
const at::Tensor& reference_map(const MaybeTensor& a, const MaybeTensor& b) {
  TORCH_CHECK(a.has_value() || b.has_value(), "corner_pool: both maps are missing");
  const at::Tensor& map = a.has_value() ? *a : *b;
  TORCH_CHECK(map.is_cuda(), "corner_pool: expected CUDA tensors, got ", map.device());
  TORCH_CHECK(map.dim() == 4, "corner_pool: expected (B, C, H, W), got ", map.sizes());
  TORCH_CHECK(map.size(0) * map.size(1) <= INT32_MAX && map.size(2) <= INT32_MAX &&
                  map.size(3) <= INT32_MAX,
              "corner_pool: tensor too large: ", map.sizes());
  for (const MaybeTensor* other : {&a, &b}) {
    if (other->has_value()) {
      TORCH_CHECK((*other)->sizes() == map.sizes() && (*other)->dtype() == map.dtype() &&
                      (*other)->device() == map.device(),
                  "corner_pool: the maps differ in shape, dtype or device");
    }
  }
  return map;
}

at::Tensor contiguous_or_empty(const MaybeTensor& x) {
  return x.has_value() ? x->contiguous() : at::Tensor();
}

template <typename T>
T* pointer(const at::Tensor& x) {
  return x.defined() ? x.data_ptr<T>() : nullptr;
}

// Comparisons and sums run in float for float, float16 and bfloat16, in double for double.
at::ScalarType accumulation_type(at::ScalarType type) {
  return type == at::kDouble ? at::kDouble : at::kFloat;
}

void check_launch(const char* error) {
  TORCH_CHECK(error == nullptr, "corner_pool: kernel launch failed: ", error);
}

at::Tensor forward(const MaybeTensor& a, const MaybeTensor& b, bool reverse, int64_t stream) {
  const at::Tensor& map = reference_map(a, b);
  const c10::DeviceGuard guard(map.device());
  const at::Tensor a_in = contiguous_or_empty(a), b_in = contiguous_or_empty(b);
  at::Tensor out = at::empty(map.sizes(), map.options());
  if (out.numel() == 0) return out;
  const int64_t planes = map.size(0) * map.size(1);
  const int height = map.size(2), width = map.size(3);
  const auto dtype = map.scalar_type();
  const auto carry_options = map.options().dtype(accumulation_type(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "corner_pool_forward", [&] {
    using Acc = typename corner_pool::Accumulate<scalar_t>::type;
    // The carries between chunks of a wide row, and between segments of a long column.
    const bool aligned = corner_pool::starts_aligned(
        {a_in.defined() ? a_in.data_ptr() : nullptr, b_in.defined() ? b_in.data_ptr() : nullptr,
         out.data_ptr()});
    const corner_pool::Plan plan = corner_pool::plan_forward<scalar_t>(
        a_in.defined(), b_in.defined(), planes, height, width, aligned);
    const int64_t row_values = plan.row_carry_values(planes);
    const int64_t column_values = plan.column_maxima_values(planes);
    const at::Tensor row_carry = row_values ? at::empty({row_values}, carry_options) : at::Tensor();
    const at::Tensor column_maxima =
        column_values ? at::empty({column_values}, carry_options) : at::Tensor();
    check_launch(corner_pool::launch_forward<scalar_t>(
        pointer<scalar_t>(a_in), pointer<scalar_t>(b_in), out.data_ptr<scalar_t>(),
        pointer<Acc>(row_carry), pointer<Acc>(column_maxima), plan, planes, height, width,
        reverse, reinterpret_cast<void*>(stream)));
  });
  return out;
}

// Returns {grad_a, grad_b}; a gradient is None when its map was not given. Each line's sums
// are taken in blocks of `sum_block` positions (0: whole lines).
std::vector<at::Tensor> backward(const MaybeTensor& a, const MaybeTensor& b,
                                 const at::Tensor& grad_out, bool reverse, int64_t sum_block,
                                 int64_t stream) {
  TORCH_CHECK(sum_block >= 0 && sum_block % 16 == 0 && sum_block <= INT32_MAX,
              "corner_pool: sum_block must be 0 or a positive multiple of 16, got ", sum_block);
  const at::Tensor& map = reference_map(a, b);
  TORCH_CHECK(grad_out.sizes() == map.sizes() && grad_out.dtype() == map.dtype() &&
                  grad_out.device() == map.device(),
              "corner_pool: the gradient differs from the maps in shape, dtype or device");
  const c10::DeviceGuard guard(map.device());
  const at::Tensor a_in = contiguous_or_empty(a), b_in = contiguous_or_empty(b);
  const at::Tensor grad = grad_out.contiguous();
  at::Tensor grad_a = a_in.defined() ? at::empty_like(a_in) : at::Tensor();
  at::Tensor grad_b = b_in.defined() ? at::empty_like(b_in) : at::Tensor();
  if (grad.numel() == 0) return {grad_a, grad_b};
  const int64_t planes = map.size(0) * map.size(1);
  const int height = map.size(2), width = map.size(3);
  const auto dtype = map.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "corner_pool_backward", [&] {
    // What the blocks of long lines carry between the kernels.
    const int64_t scratch_bytes = corner_pool::backward_scratch_bytes<scalar_t>(
        a_in.defined(), b_in.defined(), planes, height, width, static_cast<int>(sum_block));
    const at::Tensor scratch = scratch_bytes
                                   ? at::empty({scratch_bytes}, map.options().dtype(at::kByte))
                                   : at::Tensor();
    check_launch(corner_pool::launch_backward<scalar_t>(
        pointer<scalar_t>(a_in), pointer<scalar_t>(b_in), grad.data_ptr<scalar_t>(),
        pointer<scalar_t>(grad_a), pointer<scalar_t>(grad_b), planes, height, width, reverse,
        static_cast<int>(sum_block), scratch.defined() ? scratch.data_ptr() : nullptr,
        reinterpret_cast<void*>(stream)));
  });
  return {grad_a, grad_b};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "Corner pool forward: V(a) + H(b) (either may be None)",
        py::arg("a"), py::arg("b"), py::arg("reverse"), py::arg("stream"));
  m.def("backward", &backward, "Corner pool backward: (grad_a, grad_b)", py::arg("a"),
        py::arg("b"), py::arg("grad_out"), py::arg("reverse"), py::arg("sum_block"),
        py::arg("stream"));
}
