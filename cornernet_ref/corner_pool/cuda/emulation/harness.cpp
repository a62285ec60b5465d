// C entry points to the kernels of corner_pool.cu built for the CPU (see cuda_runtime.h in this
// folder), for the tests: tests/kernel_emulation.py loads them with ctypes, and the sanitizer
// program (sanitize.cpp) links them. They do what binding.cpp does for PyTorch, minus the
// tensors: allocate the forward's carries and call launch_forward / launch_backward.
//
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16. A map that is absent is nullptr.
// segments: how many segments the forward cuts each plane's rows into; 0 lets the kernel
// choose (as the binding does), a positive number forces it (the tests run both).
// sum_block: the backward's blocks of long lines (0: whole lines).
// Returns nullptr, or the error message of the launch.
//
// corner_pool_trace_begin / corner_pool_trace_end: the memory requests of the launches in
// between (see cuda_runtime.h), for benchmarks/corner_pool_access.py.
//
// emulation_shuffle: what each lane of a warp gets from one shuffle of the emulation, for
// the test that holds it to CUDA's documented semantics.
#include <cstdio>
#include <string>
#include <vector>

#include "../corner_pool.cu"

namespace {

using corner_pool::Accumulate;

template <typename T>
const char* forward(const void* a, const void* b, void* out, int64_t planes, int height,
                    int width, bool reverse, int segments) {
  using Acc = typename Accumulate<T>::type;
  if (planes < 1 || height < 1 || width < 1) segments = 1;  // the launch says what is wrong
  const corner_pool::Plan plan = corner_pool::plan_forward<T>(
      a != nullptr, b != nullptr, planes, height, width,
      corner_pool::starts_aligned({a, b, out}), segments);
  std::vector<Acc> row_carry(plan.row_carry_values(planes));
  std::vector<Acc> column_maxima(plan.column_maxima_values(planes));
  return corner_pool::launch_forward<T>(
      static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out),
      row_carry.empty() ? nullptr : row_carry.data(),
      column_maxima.empty() ? nullptr : column_maxima.data(), plan, planes, height, width,
      reverse, nullptr);
}

template <typename T>
const char* backward(const void* a, const void* b, const void* grad_out, void* grad_a,
                     void* grad_b, int64_t planes, int height, int width, bool reverse,
                     int sum_block) {
  // In 16-byte units (the kernel's Words), aligned as at::empty aligns it on a GPU.
  std::vector<corner_pool::Words> scratch(corner_pool::ceil_div(
      corner_pool::backward_scratch_bytes<T>(a != nullptr, b != nullptr, planes, height, width,
                                             sum_block),
      sizeof(corner_pool::Words)));
  return corner_pool::launch_backward<T>(
      static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(grad_out),
      static_cast<T*>(grad_a), static_cast<T*>(grad_b), planes, height, width, reverse,
      sum_block, scratch.empty() ? nullptr : scratch.data(), nullptr);
}

// Each lane offers its own number and writes down the lane number it gets back.
__global__ void shuffle_kernel(int kind, int operand, int width, int* got) {
  const int lane = static_cast<int>(threadIdx.x);
  const unsigned int all = 0xffffffffu, by = static_cast<unsigned int>(operand);
  got[lane] = kind == 0   ? __shfl_sync(all, lane, operand, width)
              : kind == 1 ? __shfl_up_sync(all, lane, by, width)
              : kind == 2 ? __shfl_down_sync(all, lane, by, width)
                          : __shfl_xor_sync(all, lane, operand, width);
}

}  // namespace

extern "C" {

// kind: 0 __shfl_sync (operand: the source lane), 1 __shfl_up_sync, 2 __shfl_down_sync
// (operand: delta), 3 __shfl_xor_sync (operand: the mask); `got`: 32 ints.
void emulation_shuffle(int kind, int operand, int width, int* got) {
  LAUNCH_KERNEL(shuffle_kernel, 1, 32, nullptr)(kind, operand, width, got);
}

const char* corner_pool_forward(int dtype, const void* a, const void* b, void* out,
                                int64_t planes, int height, int width, bool reverse,
                                int segments) {
  switch (dtype) {
    case 0: return forward<float>(a, b, out, planes, height, width, reverse, segments);
    case 1: return forward<double>(a, b, out, planes, height, width, reverse, segments);
    case 2: return forward<c10::Half>(a, b, out, planes, height, width, reverse, segments);
    case 3: return forward<c10::BFloat16>(a, b, out, planes, height, width, reverse, segments);
    default: return "corner_pool: unknown dtype code";
  }
}

const char* corner_pool_backward(int dtype, const void* a, const void* b, const void* grad_out,
                                 void* grad_a, void* grad_b, int64_t planes, int height,
                                 int width, bool reverse, int sum_block) {
  switch (dtype) {
    case 0:
      return backward<float>(a, b, grad_out, grad_a, grad_b, planes, height, width, reverse,
                             sum_block);
    case 1:
      return backward<double>(a, b, grad_out, grad_a, grad_b, planes, height, width, reverse,
                              sum_block);
    case 2:
      return backward<c10::Half>(a, b, grad_out, grad_a, grad_b, planes, height, width,
                                 reverse, sum_block);
    case 3:
      return backward<c10::BFloat16>(a, b, grad_out, grad_a, grad_b, planes, height, width,
                                     reverse, sum_block);
    default: return "corner_pool: unknown dtype code";
  }
}

void corner_pool_trace_begin() {
  cuda_emulation::requests.clear();
  cuda_emulation::tracing = true;
}

// Ends the trace. Writes one line per kind of request into `text` (at most `size` bytes,
// with the final 0), "store lanes bytes sectors lines count"; returns the length the whole
// text needs (more than size - 1: it was cut, and another call writes it again).
int corner_pool_trace_end(char* text, int size) {
  cuda_emulation::tracing = false;
  std::string lines;
  for (const auto& [kind, count] : cuda_emulation::requests) {
    const auto [store, lanes, bytes, sectors, cache_lines] = kind;
    lines += std::to_string(store) + " " + std::to_string(lanes) + " " + std::to_string(bytes) +
             " " + std::to_string(sectors) + " " + std::to_string(cache_lines) + " " +
             std::to_string(count) + "\n";
  }
  std::snprintf(text, static_cast<size_t>(size), "%s", lines.c_str());
  return static_cast<int>(lines.size());
}

}  // extern "C"
