// C entry points to the kernels of corner_pool.cu built for the CPU (see cuda_runtime.h in this
// folder), for the tests: tests/kernel_emulation.py loads them with ctypes, and the sanitizer
// program (sanitize.cpp) links them. They do what binding.cpp does for PyTorch, minus the
// tensors: allocate the forward's row carry and call launch_forward / launch_backward.
//
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16. A map that is absent is nullptr.
// Returns nullptr, or the error message of the launch.
#include <vector>

#include "../corner_pool.cu"

namespace {

using corner_pool::Accumulate;

template <typename T>
const char* forward(const void* a, const void* b, void* out, int64_t planes, int height,
                    int width, bool reverse) {
  using Acc = typename Accumulate<T>::type;
  const bool carry = corner_pool::needs_row_carry(b != nullptr, width);
  std::vector<Acc> row_carry(carry ? planes * height : 0);
  return corner_pool::launch_forward<T>(static_cast<const T*>(a), static_cast<const T*>(b),
                                        static_cast<T*>(out), carry ? row_carry.data() : nullptr,
                                        planes, height, width, reverse, nullptr);
}

template <typename T>
const char* backward(const void* a, const void* b, const void* grad_out, void* grad_a,
                     void* grad_b, int64_t planes, int height, int width, bool reverse) {
  return corner_pool::launch_backward<T>(
      static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(grad_out),
      static_cast<T*>(grad_a), static_cast<T*>(grad_b), planes, height, width, reverse, nullptr);
}

}  // namespace

extern "C" {

const char* corner_pool_forward(int dtype, const void* a, const void* b, void* out,
                                int64_t planes, int height, int width, bool reverse) {
  switch (dtype) {
    case 0: return forward<float>(a, b, out, planes, height, width, reverse);
    case 1: return forward<double>(a, b, out, planes, height, width, reverse);
    case 2: return forward<c10::Half>(a, b, out, planes, height, width, reverse);
    case 3: return forward<c10::BFloat16>(a, b, out, planes, height, width, reverse);
    default: return "corner_pool: unknown dtype code";
  }
}

const char* corner_pool_backward(int dtype, const void* a, const void* b, const void* grad_out,
                                 void* grad_a, void* grad_b, int64_t planes, int height,
                                 int width, bool reverse) {
  switch (dtype) {
    case 0: return backward<float>(a, b, grad_out, grad_a, grad_b, planes, height, width, reverse);
    case 1: return backward<double>(a, b, grad_out, grad_a, grad_b, planes, height, width, reverse);
    case 2:
      return backward<c10::Half>(a, b, grad_out, grad_a, grad_b, planes, height, width, reverse);
    case 3:
      return backward<c10::BFloat16>(a, b, grad_out, grad_a, grad_b, planes, height, width,
                                     reverse);
    default: return "corner_pool: unknown dtype code";
  }
}

}  // extern "C"
