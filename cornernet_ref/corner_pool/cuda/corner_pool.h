// Interface between the kernels (corner_pool.cu, compiled by nvcc) and the PyTorch binding
// (binding.cpp, compiled by the host compiler). It needs no CUDA header: the stream travels
// as an opaque pointer, and errors come back as a message (nullptr when all went well).
#pragma once

#include <cstdint>

namespace corner_pool {

// The kernels walk each plane in TILE x TILE tiles (see corner_pool.cu).
constexpr int TILE = 32;

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

// Whether the kernels need the column carry buffers (planes * width values each, see below):
// only when the map pooled along columns is present and the plane is wider than one tile.
constexpr bool needs_column_carry(bool has_a, int width) { return has_a && width > TILE; }

// Forward of one pool over `planes` contiguous H x W planes: out = V(a) + H(b), where V pools
// the rows (top if reverse, else bottom) and H the columns (left if reverse, else right).
// a or b may be nullptr: then out is the pool of the other one alone. `column_carry` holds
// planes * width values, needed only when width > TILE (else nullptr).
template <typename T>
const char* launch_forward(const T* a, const T* b, T* out,
                           typename Accumulate<T>::type* column_carry, int64_t planes,
                           int height, int width, bool reverse, void* stream);

// Backward: grad_a and grad_b (each may be nullptr together with its input) from grad_out.
// The three carry buffers hold planes * width values, needed only when width > TILE.
template <typename T>
const char* launch_backward(const T* a, const T* b, const T* grad_out, T* grad_a, T* grad_b,
                            typename Accumulate<T>::type* carry_best, int32_t* carry_at,
                            typename Accumulate<T>::type* carry_sum, int64_t planes, int height,
                            int width, bool reverse, void* stream);

}  // namespace corner_pool
