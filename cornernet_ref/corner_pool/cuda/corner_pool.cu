// Corner pooling (paper §3.4): fused CUDA kernels, forward and backward.
//
// If you have never written CUDA
// ------------------------------
// A kernel is a function that many threads run at the same time, each knowing its number
// (threadIdx.x) and the number of its block (blockIdx.x). Threads come in blocks (here 128
// threads), blocks in a grid. 32 consecutive threads form a *warp*: the warp executes one
// instruction for its 32 threads (its *lanes*) at once, and its lanes can pass values to one
// another in registers with *shuffles* (__shfl_up_sync(mask, value, d): each lane gets the
// value of the lane d below it). When a warp reads consecutive numbers of global (GPU main)
// memory, the hardware serves them in a few wide transactions: the access is *coalesced*;
// a lane can also read 16 bytes in one instruction (four float32, a *vector* load).
//
// Corner pooling does one comparison and one addition per number, so its speed is the speed
// at which it moves bytes, and the limit is the memory bandwidth only if the warps issue few
// enough instructions per byte. The kernels below are written for that: every warp works on
// its own, without shared memory or __syncthreads(); each lane loads and stores whole vectors;
// addresses inside a plane are 32-bit offsets, computed once per row.
//
// What is computed
// ----------------
// Top-left: out = top(a) + left(b); top(a)[i][j] is the maximum of a over rows i..H-1 of
// column j, left(b)[i][j] the maximum of b over columns j..W-1 of row i: scans that start at
// the bottom row and at the rightmost column. Bottom-right: out = bottom(a) + right(b), scans
// from the top row and the leftmost column. `Reverse` (a template parameter) is true for the
// top-left pool: its scans run towards smaller indices.
//
// Forward: one warp per plane
// ---------------------------
// Lane l owns the VEC = 4 consecutive columns 4l .. 4l + 3 of a 128-column *chunk* and walks
// the rows in scan order, AHEAD = 4 rows at a time: first the loads of the 4 rows, then their
// scans, so that each warp has several rows on their way from memory. For each row it has
// its 4 values of a and of b:
//
//   vertical   (a): the running maximum of each of its 4 columns stays in its registers;
//   horizontal (b): the row's running maximum is a *scan across the warp*: each lane scans its
//              4 values, then the lanes combine their totals in 5 shuffle steps (1, 2, 4, 8,
//              16 lanes apart), and each lane folds in the total of the lanes before it.
//
// Taking a maximum in this order instead of one value after the other changes nothing: the
// running maximum keeps the first of the largest values met (see `first_max`), and "the first
// largest value" of a sequence is the same however its parts are grouped. So the result is
// the reference's, bit for bit. A plane wider than 128 columns is walked chunk after chunk in
// scan order; between chunks each row's maximum waits in `row_carry` (one value per row).
//
// Backward and the tie rule
// -------------------------
// Each output's gradient goes to the position of its maximum: the first maximum met in the
// scan, because the running argmax moves only on a strictly greater value. The outputs that
// share a maximum are consecutive, from the maximum to the step before the next new maximum:
// a *run*. A thread carries its run (best value, where it was met, sum of the gradients of
// the run so far). When a strictly greater value arrives, the run is complete and its sum is
// written at the old maximum's position; every other position gets 0. The sums must be added
// one after the other in scan order, as the PyTorch reference does
// (cornernet_ref/corner_pool/reference.py), to agree with it bit for bit, so each scanned
// line belongs to one thread:
//
//   a warp for the vertical gradient: lane l owns 4 columns and walks the rows;
//   a warp for the horizontal gradient: lane l owns one row and walks its columns, 4 at a time
//     (each load of a lane reads 16 bytes of its own row).
//
// Both read the output gradient; the two warps of a plane run side by side, so the second
// read comes mostly from the L2 cache. Each gradient is written by the one thread that owns
// its line: no atomics, deterministic.

#include <cuda_runtime.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "corner_pool.h"

// A kernel launch, kernel<<<blocks, threads, 0, stream>>>(args...), is written
// LAUNCH_KERNEL(kernel, blocks, threads, stream)(args...): a host C++ compiler cannot parse
// <<< >>>, and the CPU build of this file (cuda/emulation/cuda_runtime.h) defines the macro
// its own way.
#ifndef LAUNCH_KERNEL
#define LAUNCH_KERNEL(kernel, blocks, threads, stream) kernel<<<blocks, threads, 0, stream>>>
#endif

namespace corner_pool {
namespace {

constexpr int WARP = 32;
constexpr int VEC = CHUNK / WARP;  // consecutive columns per lane (4)
constexpr int WARPS = 4;           // warps per block
constexpr int AHEAD = 4;           // rows (or vectors) a lane loads before it uses the first
constexpr int THREADS = WARPS * WARP;
constexpr unsigned int ALL_LANES = 0xffffffffu;

// n / d rounded up, in 64 bits: n + d - 1 overflows an int for n near 2^31.
__host__ __device__ constexpr int ceil_div(int n, int d) {
  return static_cast<int>((static_cast<int64_t>(n) + d - 1) / d);
}

// The comparison that moves the argmax: strictly greater, NaN above every number. An equal
// value does not move it, so among equal maxima the first one met keeps the gradient.
// Written `value > best || (isnan(value) && !isnan(best))` it costs branches; the same
// truth table without them: "not at most best" is true for a greater value and for NaN, and
// nothing is greater than a NaN best. `&` instead of `&&`: no branch.
template <typename Acc>
__device__ __forceinline__ bool greater(Acc value, Acc best) {
  return !(value <= best) & (best == best);
}

// The running maximum's step: `earlier` met before `later`; the first of equal values stays.
template <typename Acc>
__device__ __forceinline__ Acc first_max(Acc earlier, Acc later) {
  return greater(later, earlier) ? later : earlier;
}

// -inf changes no running maximum: first_max(-inf, x) is x, or -inf itself when x is -inf.
template <typename Acc>
__device__ __forceinline__ Acc neutral() {
  return -INFINITY;
}

// VEC values of T side by side, aligned so that one instruction (two for float64) loads or
// stores them.
template <typename T>
struct alignas(VEC * sizeof(T)) Vector {
  T value[VEC];
};

// The VEC numbers of `src` from `offset` on, widened to Acc; `count` of them lie inside the
// row (VEC, or fewer at its end), the others read as -inf. `vector`: the row and the
// pointer are aligned, so one instruction loads them all.
template <typename T, typename Acc>
__device__ __forceinline__ void load(const T* __restrict__ src, int offset, int count,
                                     bool vector, Acc (&values)[VEC]) {
  if (vector && count == VEC) {
    const Vector<T> loaded = *reinterpret_cast<const Vector<T>*>(src + offset);
#pragma unroll
    for (int j = 0; j < VEC; ++j) values[j] = static_cast<Acc>(loaded.value[j]);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      values[j] = j < count ? static_cast<Acc>(src[offset + j]) : neutral<Acc>();
  }
}

// Store the first `count` of `values` at `offset`, rounded once to T.
template <typename T, typename Acc>
__device__ __forceinline__ void store(T* __restrict__ dst, int offset, int count, bool vector,
                                      const Acc (&values)[VEC]) {
  if (vector && count == VEC) {
    Vector<T> stored;
#pragma unroll
    for (int j = 0; j < VEC; ++j) stored.value[j] = static_cast<T>(values[j]);
    *reinterpret_cast<Vector<T>*>(dst + offset) = stored;
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      if (j < count) dst[offset + j] = static_cast<T>(values[j]);
  }
}

template <typename T>
__device__ bool aligned(const T* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % sizeof(Vector<T>) == 0;
}

// Where plane `plane` starts in a (planes, H, W) tensor, or nullptr for an absent map.
template <typename T>
__device__ T* plane_start(T* tensor, int64_t plane, int height, int width) {
  return tensor == nullptr ? nullptr : tensor + plane * height * width;
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// The horizontal scan of one row chunk across the warp: on return, values[j] is the running
// maximum up to (and including) this lane's j-th column, in scan order, starting from
// `carry` (in the lane that starts the scan: the maximum of the chunks before, or -inf;
// -inf in the others). Returns the maximum of the whole chunk, in every lane.
template <bool Reverse, typename Acc>
__device__ __forceinline__ Acc scan_row(Acc (&values)[VEC], Acc carry, int lane) {
  // This lane's own VEC values, in scan order, after the carry (-inf but in the lane that
  // starts the scan, so the other lanes are unchanged by it).
  const int first_lane = Reverse ? WARP - 1 : 0;
  const int first_value = Reverse ? VEC - 1 : 0;
  values[first_value] = first_max(carry, values[first_value]);
#pragma unroll
  for (int step = 1; step < VEC; ++step) {
    const int j = Reverse ? VEC - 1 - step : step, before = Reverse ? j + 1 : j - 1;
    values[j] = first_max(values[before], values[j]);
  }
  // The lanes' totals: after the step of distance d, a lane holds the maximum of its own and
  // the 2d - 1 lanes before it (in scan order: below it, or above it when Reverse).
  Acc total = values[Reverse ? 0 : VEC - 1];
#pragma unroll
  for (int distance = 1; distance < WARP; distance *= 2) {
    const Acc before = Reverse ? __shfl_down_sync(ALL_LANES, total, distance)
                               : __shfl_up_sync(ALL_LANES, total, distance);
    const bool exists = Reverse ? lane + distance < WARP : lane >= distance;
    if (exists) total = first_max(before, total);
  }
  // Fold the maximum of the lanes before this one into its values.
  const Acc lanes_before = Reverse ? __shfl_down_sync(ALL_LANES, total, 1)
                                   : __shfl_up_sync(ALL_LANES, total, 1);
  if (lane != first_lane) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) values[j] = first_max(lanes_before, values[j]);
  }
  return __shfl_sync(ALL_LANES, total, Reverse ? 0 : WARP - 1);
}

template <typename T, bool Reverse>
__global__ void __launch_bounds__(THREADS)
    forward_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                   typename Accumulate<T>::type* __restrict__ row_carry, int64_t planes,
                   int height, int width) {
  using Acc = typename Accumulate<T>::type;
  const int64_t plane = static_cast<int64_t>(blockIdx.x) * WARPS + threadIdx.x / WARP;
  if (plane >= planes) return;  // the whole warp: the last block may have idle warps
  const int lane = threadIdx.x % WARP;
  a = plane_start(a, plane, height, width);
  b = plane_start(b, plane, height, width);
  out = plane_start(out, plane, height, width);
  Acc* carry = row_carry == nullptr ? nullptr : row_carry + plane * height;
  // One instruction per vector when every row starts on a vector boundary.
  const bool vector = width % VEC == 0 && (a == nullptr || aligned(a)) &&
                      (b == nullptr || aligned(b)) && aligned(out);
  const int chunks = ceil_div(width, CHUNK);

  for (int k = 0; k < chunks; ++k) {
    const int chunk = Reverse ? chunks - 1 - k : k;  // chunks in scan order
    const int column = chunk * CHUNK + lane * VEC;   // this lane's first column
    const int count = min(VEC, width - column);      // of its columns, those in the plane
    const int first = count > 0 ? column : 0;        // where its offsets start (a lane past
                                                     // the edge loads nothing)
    Acc column_max[VEC];                             // vertical: the running maxima of a
#pragma unroll
    for (int j = 0; j < VEC; ++j) column_max[j] = neutral<Acc>();

    // Rows in scan order, AHEAD at a time: first the loads of all of them, so that they
    // travel from memory together (a load does not wait for its value; the instruction
    // that uses the value does), then the scans. `offset`: the lane's first cell of a row.
    for (int first_step = 0; first_step < height; first_step += AHEAD) {
      Acc a_rows[AHEAD][VEC], b_rows[AHEAD][VEC];
#pragma unroll
      for (int r = 0; r < AHEAD; ++r) {
        const int step = min(first_step + r, height - 1);  // past the end: the last row again
        const int offset = (Reverse ? height - 1 - step : step) * width + first;
        if (a != nullptr) load(a, offset, count, vector, a_rows[r]);
        if (b != nullptr) load(b, offset, count, vector, b_rows[r]);
      }
#pragma unroll
      for (int r = 0; r < AHEAD; ++r) {
        const int step = first_step + r;
        if (step >= height) break;
        const int row = Reverse ? height - 1 - step : step;
        const int offset = row * width + first;
        Acc pooled[VEC] = {};
        if (a != nullptr) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            column_max[j] = first_max(column_max[j], a_rows[r][j]);
            pooled[j] = column_max[j];
          }
        }
        if (b != nullptr) {
          Acc (&values)[VEC] = b_rows[r];
          // A wide plane: the row's maximum over the chunks before, kept by the lane that
          // starts the scan of each chunk (so it reads what it wrote itself).
          const bool starts = lane == (Reverse ? WARP - 1 : 0);
          const Acc before = starts && k > 0 ? carry[row] : neutral<Acc>();
          const Acc row_max = scan_row<Reverse>(values, before, lane);
          if (starts && k + 1 < chunks) carry[row] = row_max;
#pragma unroll
          for (int j = 0; j < VEC; ++j)
            pooled[j] = a == nullptr ? values[j] : pooled[j] + values[j];
        }
        // out = top + left, computed in Acc and rounded once to T, as PyTorch rounds a + b.
        store(out, offset, count, vector, pooled);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// The run of one scanned line.
template <typename Acc>
struct Run {
  Acc best;  // the current maximum
  int at;    // its offset in the plane; -1 before the first value
  Acc sum;   // the gradients of the outputs since then, added in scan order

  // One more value of the line, at `offset`, whose output has gradient `grad`. A new maximum
  // completes the run: its sum goes to the old maximum (after the zero stored there before).
  template <typename T>
  __device__ __forceinline__ void step(Acc value, Acc grad, int offset, T* __restrict__ dst) {
    if (at < 0 || greater(value, best)) {
      if (at >= 0) dst[at] = static_cast<T>(sum);
      best = value;
      at = offset;
      sum = grad;
    } else {
      sum += grad;
    }
  }
};

// Vertical gradient of one plane: lane l owns 4 columns of each chunk and walks the rows.
template <typename T, bool Reverse>
__device__ void backward_columns(const T* __restrict__ a, const T* __restrict__ grad_out,
                                 T* __restrict__ grad_a, int height, int width, bool vector,
                                 int lane) {
  using Acc = typename Accumulate<T>::type;
  const Acc zeros[VEC] = {};
  for (int column = lane * VEC; column < width; column += CHUNK) {
    const int count = min(VEC, width - column);
    Run<Acc> runs[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) runs[j] = {0, -1, 0};
    for (int first_step = 0; first_step < height; first_step += AHEAD) {  // as the forward
      Acc values[AHEAD][VEC], grads[AHEAD][VEC];
#pragma unroll
      for (int r = 0; r < AHEAD; ++r) {
        const int step = min(first_step + r, height - 1);
        const int offset = (Reverse ? height - 1 - step : step) * width + column;
        load(a, offset, count, vector, values[r]);
        load(grad_out, offset, count, vector, grads[r]);
      }
#pragma unroll
      for (int r = 0; r < AHEAD; ++r) {
        const int step = first_step + r;
        if (step >= height) break;
        const int offset = (Reverse ? height - 1 - step : step) * width + column;
        store(grad_a, offset, count, vector, zeros);  // not a maximum, unless a run says so
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (j < count) runs[j].step(values[r][j], grads[r][j], offset + j, grad_a);
      }
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      if (j < count) grad_a[runs[j].at] = static_cast<T>(runs[j].sum);  // the last runs
  }
}

// Horizontal gradient of one plane: lane l owns row l of each group of 32 rows and walks its
// columns in scan order, VEC at a time.
template <typename T, bool Reverse>
__device__ void backward_rows(const T* __restrict__ b, const T* __restrict__ grad_out,
                              T* __restrict__ grad_b, int height, int width, bool vector,
                              int lane) {
  using Acc = typename Accumulate<T>::type;
  const Acc zeros[VEC] = {};
  const int vectors = ceil_div(width, VEC);
  for (int row = lane; row < height; row += WARP) {
    Run<Acc> run{0, -1, 0};
    for (int first_v = 0; first_v < vectors; first_v += AHEAD) {  // AHEAD vectors at a time
      Acc values[AHEAD][VEC], grads[AHEAD][VEC];
#pragma unroll
      for (int r = 0; r < AHEAD; ++r) {
        const int v = min(first_v + r, vectors - 1);
        const int column = (Reverse ? vectors - 1 - v : v) * VEC;
        const int count = min(VEC, width - column), offset = row * width + column;
        load(b, offset, count, vector, values[r]);
        load(grad_out, offset, count, vector, grads[r]);
      }
#pragma unroll
      for (int r = 0; r < AHEAD; ++r) {
        const int v = first_v + r;
        if (v >= vectors) break;
        const int column = (Reverse ? vectors - 1 - v : v) * VEC;
        const int count = min(VEC, width - column), offset = row * width + column;
        store(grad_b, offset, count, vector, zeros);
#pragma unroll
        for (int step = 0; step < VEC; ++step) {
          const int j = Reverse ? VEC - 1 - step : step;
          if (j < count) run.step(values[r][j], grads[r][j], offset + j, grad_b);
        }
      }
    }
    grad_b[run.at] = static_cast<T>(run.sum);  // the last run of the row
  }
}

// Two warps per plane: the even one computes the gradient of a, the odd one that of b.
template <typename T, bool Reverse>
__global__ void __launch_bounds__(THREADS)
    backward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                    const T* __restrict__ grad_out, T* __restrict__ grad_a,
                    T* __restrict__ grad_b, int64_t planes, int height, int width) {
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
  const int64_t plane = static_cast<int64_t>(blockIdx.x) * (WARPS / 2) + warp / 2;
  if (plane >= planes) return;
  const bool columns = warp % 2 == 0;
  const T* map = plane_start(columns ? a : b, plane, height, width);
  if (map == nullptr) return;  // no gradient wanted for this map
  const T* grad = plane_start(grad_out, plane, height, width);
  T* result = plane_start(columns ? grad_a : grad_b, plane, height, width);
  const bool vector = width % VEC == 0 && aligned(map) && aligned(grad) && aligned(result);
  if (columns)
    backward_columns<T, Reverse>(map, grad, result, height, width, vector, lane);
  else
    backward_rows<T, Reverse>(map, grad, result, height, width, vector, lane);
}

const char* launch_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

// The most values a plane may have: offsets inside a plane are 32-bit ints, and a lane's
// first column may lie up to 2 * CHUNK past the last one.
constexpr int64_t MAX_PLANE = INT32_MAX - 2 * CHUNK;

// What is wrong with the sizes, or nullptr.
const char* size_problem(int64_t planes, int height, int width) {
  if (planes < 1 || height < 1 || width < 1) return "corner_pool: every size must be at least 1";
  if (planes > INT32_MAX) return "corner_pool: more than 2^31 - 1 planes (B * C)";
  if (static_cast<int64_t>(height) * width > MAX_PLANE)
    return "corner_pool: a plane (H * W) of more than 2^31 - 257 values (32-bit offsets)";
  return nullptr;
}

}  // namespace

template <typename T>
const char* launch_forward(const T* a, const T* b, T* out,
                           typename Accumulate<T>::type* row_carry, int64_t planes,
                           int height, int width, bool reverse, void* stream) {
  if (const char* problem = size_problem(planes, height, width)) return problem;
  const auto kernel = reverse ? forward_kernel<T, true> : forward_kernel<T, false>;
  const auto blocks = static_cast<unsigned int>(ceil_div(static_cast<int>(planes), WARPS));
  LAUNCH_KERNEL(kernel, blocks, THREADS, static_cast<cudaStream_t>(stream))(
      a, b, out, row_carry, planes, height, width);
  return launch_error();
}

template <typename T>
const char* launch_backward(const T* a, const T* b, const T* grad_out, T* grad_a, T* grad_b,
                            int64_t planes, int height, int width, bool reverse, void* stream) {
  if (const char* problem = size_problem(planes, height, width)) return problem;
  const auto kernel = reverse ? backward_kernel<T, true> : backward_kernel<T, false>;
  const auto blocks = static_cast<unsigned int>(ceil_div(static_cast<int>(planes), WARPS / 2));
  LAUNCH_KERNEL(kernel, blocks, THREADS, static_cast<cudaStream_t>(stream))(
      a, b, grad_out, grad_a, grad_b, planes, height, width);
  return launch_error();
}

#define CORNER_POOL_INSTANTIATE(T)                                                          \
  template const char* launch_forward<T>(const T*, const T*, T*, Accumulate<T>::type*,       \
                                         int64_t, int, int, bool, void*);                    \
  template const char* launch_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int, \
                                          int, bool, void*);

CORNER_POOL_INSTANTIATE(float)
CORNER_POOL_INSTANTIATE(double)
CORNER_POOL_INSTANTIATE(c10::Half)
CORNER_POOL_INSTANTIATE(c10::BFloat16)

}  // namespace corner_pool
