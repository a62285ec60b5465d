// Interface between the kernels (corner_pool.cu, compiled by nvcc) and the PyTorch binding
// (binding.cpp, compiled by the host compiler). It needs no CUDA header: the stream travels
// as an opaque pointer, and errors come back as a message (nullptr when all went well).
#pragma once

#include <cstdint>

namespace corner_pool {

// The forward kernel walks each plane in chunks of CHUNK columns, one warp per chunk (see
// corner_pool.cu).
constexpr int CHUNK = 128;

// Comparisons, sums and shared-memory tiles use `Accumulate<T>::type`: float for float,
// float16 and bfloat16 (which hold every 16-bit value exactly), double for double.
template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

// Whether the forward needs its row carry buffer (planes * height values, see below): only
// when the map pooled along rows is present and the plane is wider than one chunk.
constexpr bool needs_row_carry(bool has_b, int width) { return has_b && width > CHUNK; }

// Forward of one pool over `planes` contiguous H x W planes: out = V(a) + H(b), where V pools
// the rows (top if reverse, else bottom) and H the columns (left if reverse, else right).
// a or b may be nullptr: then out is the pool of the other one alone. `row_carry` holds
// planes * height values when needs_row_carry (else nullptr). H * W may be at most
// 2^31 - 257.
template <typename T>
const char* launch_forward(const T* a, const T* b, T* out,
                           typename Accumulate<T>::type* row_carry, int64_t planes,
                           int height, int width, bool reverse, void* stream);

// Backward: grad_a and grad_b (each may be nullptr together with its input) from grad_out.
template <typename T>
const char* launch_backward(const T* a, const T* b, const T* grad_out, T* grad_a, T* grad_b,
                            int64_t planes, int height, int width, bool reverse, void* stream);

}  // namespace corner_pool
