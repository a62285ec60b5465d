// Corner pooling (paper §3.4): fused CUDA kernels, forward and backward.
//
// If you have never written CUDA
// ------------------------------
// A kernel is a function that many threads run at the same time, each knowing its number
// (threadIdx.x) and the number of its block (blockIdx.x). Threads come in blocks (here 64
// threads), blocks in a grid (here one block per (image, channel) plane). The threads of a
// block share a small fast memory ("shared memory", declared __shared__) and can wait for
// one another (__syncthreads()); different blocks cannot talk. 32 consecutive threads form a
// warp, which executes one instruction for its 32 threads at once. When a warp reads 32
// consecutive numbers from global (GPU main) memory, the hardware serves them as one wide
// transaction: the access is *coalesced*. When it reads 32 numbers that lie far apart, it
// needs up to 32 transactions. Corner pooling does little arithmetic per byte, so its speed
// is the speed at which it moves bytes, and every global load and store here is coalesced.
//
// What is computed
// ----------------
// Top-left: out = top(a) + left(b); top(a)[i][j] is the maximum of a over rows i..H-1 of
// column j, left(b)[i][j] the maximum of b over columns j..W-1 of row i. Both are scans
// that start at a border: the bottom row, the rightmost column. Bottom-right: out =
// bottom(a) + right(b), scans from the top row and the leftmost column. In *scan
// coordinates* (row 0 = the row where the scan starts, column 0 likewise) the two corners are
// one algorithm: top-left reads each plane flipped in both axes (`reverse`), bottom-right as
// it is. Everything below is in scan coordinates; `Plane::index` maps back to memory.
//
// How the work is split
// ---------------------
// A block owns one plane. It walks the plane in 32 x 32 tiles: strips of 32 rows in scan
// order and, within a strip, chunks of 32 columns in scan order. For each tile:
//
//   1. load.  The 64 threads copy the tile of a and of b into shared memory. Thread t takes
//             column t % 32 of rows t / 32, t / 32 + 2, ...: each warp instruction reads 32
//             consecutive numbers of one row, so every load is coalesced.
//   2. scan.  Warp 0 does the vertical scan: thread c walks down column c of the tile and
//             carries the running maximum of a. Warp 1 does the horizontal scan: thread r
//             walks along row r and carries the running maximum of b. In shared memory,
//             walking down a column costs the same as walking along a row (see PITCH), which
//             is why the tile goes through shared memory instead of being scanned in place.
//   3. store. The 64 threads write out = top + left for the tile, coalesced like the load.
//
// The running maxima continue from tile to tile. A row's maximum stays in the register of
// its warp-1 thread while the chunks of the strip go by. A column's maximum is needed again
// only in the next strip: with a single chunk (width <= 32) it stays in a register; otherwise
// it is parked in `column_carry`, one slot per column in global memory (a few bytes per
// column per strip, next to the tile's 2 KB or more).
//
// While a tile is scanned and stored, the next tile is already on its way from global memory
// into registers (`staged`): the memory latency hides behind the scan.
//
// Backward and the tie rule
// -------------------------
// Each output's gradient goes to the position of its maximum: the first maximum met in the
// scan, because the running argmax moves only on a strictly greater value. The outputs that
// share a maximum are consecutive, from the maximum to the step before the next new
// maximum: a *run*. A scanning thread carries its run (best value, where it was met, sum of
// the gradients of the run so far). When a strictly greater value arrives, the run is
// complete and its sum is written at the old maximum's position; every other position gets
// 0. Each gradient is written exactly once, by the one thread that owns its column (or row):
// no atomics, and the sums are added in scan order like the PyTorch reference
// (cornernet_ref/corner_pool/reference.py), so the result is deterministic and equal to the
// reference bit for bit.

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

constexpr int THREADS = 2 * TILE;  // warp 0 scans columns, warp 1 scans rows
constexpr int ROWS_PER_PASS = THREADS / TILE;  // tile rows one load instruction covers (2)
constexpr int STAGED = TILE * TILE / THREADS;  // tile cells each thread loads and stores (16)
// A shared tile is stored row by row with rows of PITCH = 33 values. Shared memory is split
// into 32 banks (consecutive 4-byte words in consecutive banks), and a warp's access is
// fast when its 32 threads hit 32 different banks. Walking along a row, thread c reads
// [r][c]: consecutive words, all banks differ. Walking down a column, thread r reads [r][c]:
// words 33 apart, which land in banks r + c (mod 32), all different too. With rows of 32,
// all 32 threads would hit the same bank and wait for one another.
constexpr int PITCH = TILE + 1;

// n / d rounded up, in 64 bits: n + d - 1 overflows an int for n near 2^31.
__host__ __device__ constexpr int ceil_div(int n, int d) {
  return static_cast<int>((static_cast<int64_t>(n) + d - 1) / d);
}

// The comparison that moves the argmax: strictly greater, NaN above every number. An equal
// value does not move it, so among equal maxima the first one met keeps the gradient.
template <typename Acc>
__device__ __forceinline__ bool greater(Acc value, Acc best) {
  return value > best || (isnan(value) && !isnan(best));
}

// One plane of the (B * C, H, W) tensors, addressed in scan coordinates.
struct Plane {
  int64_t id;  // blockIdx.x: which (image, channel)
  int height, width;
  bool reverse;  // top-left: scan from the bottom-right corner; bottom-right: from the top-left

  __device__ int64_t index(int scan_row, int scan_col) const {
    const int row = reverse ? height - 1 - scan_row : scan_row;
    const int col = reverse ? width - 1 - scan_col : scan_col;
    return (id * height + row) * width + col;
  }
};

// Tile number t of a plane: strips of TILE rows in scan order, chunks of TILE columns inside.
struct Tile {
  int row0, col0;  // first cell, in scan coordinates
  int rows, cols;  // TILE, or fewer at the far edges of the plane

  __device__ Tile(int t, int height, int width) {
    const int chunks = ceil_div(width, TILE);
    row0 = t / chunks * TILE;
    col0 = t % chunks * TILE;
    rows = min(TILE, height - row0);
    cols = min(TILE, width - col0);
  }
};

// The cell (r, c) of the tile that thread threadIdx.x loads and stores as its k-th cell.
__device__ __forceinline__ int cell_row(int k) { return threadIdx.x / TILE + k * ROWS_PER_PASS; }
__device__ __forceinline__ int cell_col() { return threadIdx.x % TILE; }

// Step 1, first half: start reading a tile of `src` into registers. The loads are issued
// here and their values used only in `commit`, so the scan in between hides their latency.
template <typename T>
__device__ void stage(const T* __restrict__ src, const Plane& plane, const Tile& tile,
                      T (&staged)[STAGED]) {
#pragma unroll
  for (int k = 0; k < STAGED; ++k) {
    const int r = cell_row(k), c = cell_col();
    if (r < tile.rows && c < tile.cols) staged[k] = src[plane.index(tile.row0 + r, tile.col0 + c)];
  }
}

// Step 1, second half: registers -> shared memory, widened to the accumulation type.
template <typename T, typename Acc>
__device__ void commit(const T (&staged)[STAGED], const Tile& tile, Acc (*shared)[PITCH]) {
#pragma unroll
  for (int k = 0; k < STAGED; ++k) {
    const int r = cell_row(k), c = cell_col();
    if (r < tile.rows && c < tile.cols) shared[r][c] = static_cast<Acc>(staged[k]);
  }
}

// Step 3 of the backward: a gradient tile, shared memory -> global memory, in T.
template <typename T, typename Acc>
__device__ void store(const Acc (*shared)[PITCH], const Plane& plane, const Tile& tile,
                      T* __restrict__ dst) {
#pragma unroll
  for (int k = 0; k < STAGED; ++k) {
    const int r = cell_row(k), c = cell_col();
    if (r < tile.rows && c < tile.cols)
      dst[plane.index(tile.row0 + r, tile.col0 + c)] = static_cast<T>(shared[r][c]);
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(THREADS)
    forward_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                   typename Accumulate<T>::type* __restrict__ column_carry, int height,
                   int width, bool reverse) {
  using Acc = typename Accumulate<T>::type;
  __shared__ Acc a_tile[TILE][PITCH];  // a, then its running maximum down each column
  __shared__ Acc b_tile[TILE][PITCH];  // b, then its running maximum along each row

  const Plane plane{blockIdx.x, height, width, reverse};
  const int chunks = ceil_div(width, TILE), tiles = ceil_div(height, TILE) * chunks;
  const int lane = threadIdx.x % TILE;  // the column (warp 0) or row (warp 1) this thread scans
  Acc column_best = 0;  // warp 0: running maximum of column `lane`, kept when chunks == 1
  Acc row_best = 0;     // warp 1: running maximum of row `lane` of the current strip

  T staged_a[STAGED], staged_b[STAGED];
  if (a != nullptr) stage(a, plane, Tile(0, height, width), staged_a);
  if (b != nullptr) stage(b, plane, Tile(0, height, width), staged_b);

  for (int t = 0; t < tiles; ++t) {
    const Tile tile(t, height, width);
    if (a != nullptr) commit(staged_a, tile, a_tile);
    if (b != nullptr) commit(staged_b, tile, b_tile);
    __syncthreads();  // the tile is in shared memory
    if (t + 1 < tiles) {  // start loading the next tile
      const Tile next(t + 1, height, width);
      if (a != nullptr) stage(a, plane, next, staged_a);
      if (b != nullptr) stage(b, plane, next, staged_b);
    }

    // Step 2: warp 0 scans the columns of a, warp 1 the rows of b.
    if (threadIdx.x < TILE) {
      const int c = lane;
      if (a != nullptr && c < tile.cols) {
        const int64_t slot = plane.id * width + tile.col0 + c;
        Acc best = a_tile[0][c];  // the first row of the plane is its own maximum
        if (tile.row0 > 0) best = chunks == 1 ? column_best : column_carry[slot];
        for (int r = 0; r < tile.rows; ++r) {
          const Acc value = a_tile[r][c];
          if (greater(value, best)) best = value;
          a_tile[r][c] = best;
        }
        column_best = best;
        if (chunks > 1) column_carry[slot] = best;
      }
    } else {
      const int r = lane;
      if (b != nullptr && r < tile.rows) {
        Acc best = tile.col0 == 0 ? b_tile[r][0] : row_best;
        for (int c = 0; c < tile.cols; ++c) {
          const Acc value = b_tile[r][c];
          if (greater(value, best)) best = value;
          b_tile[r][c] = best;
        }
        row_best = best;
      }
    }
    __syncthreads();  // both scans are done

    // Step 3: out = top + left, rounded once to T as PyTorch rounds a + b.
#pragma unroll
    for (int k = 0; k < STAGED; ++k) {
      const int r = cell_row(k), c = cell_col();
      if (r < tile.rows && c < tile.cols) {
        const Acc pooled = a == nullptr   ? b_tile[r][c]
                           : b == nullptr ? a_tile[r][c]
                                          : a_tile[r][c] + b_tile[r][c];
        out[plane.index(tile.row0 + r, tile.col0 + c)] = static_cast<T>(pooled);
      }
    }
    __syncthreads();  // the tiles may be overwritten
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// The run of one column (or row) in the backward scan.
template <typename Acc>
struct Run {
  Acc best;  // the current maximum
  int at;    // where it was met (scan row for a column, scan column for a row)
  Acc sum;   // the gradients of the outputs since then, added in scan order
};

template <typename T>
__global__ void __launch_bounds__(THREADS)
    backward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                    const T* __restrict__ grad_out, T* __restrict__ grad_a,
                    T* __restrict__ grad_b, typename Accumulate<T>::type* __restrict__ carry_best,
                    int32_t* __restrict__ carry_at,
                    typename Accumulate<T>::type* __restrict__ carry_sum, int height, int width,
                    bool reverse) {
  using Acc = typename Accumulate<T>::type;
  __shared__ Acc a_tile[TILE][PITCH];  // a, then the gradient of a
  __shared__ Acc b_tile[TILE][PITCH];  // b, then the gradient of b
  __shared__ Acc g_tile[TILE][PITCH];  // the gradient of out

  const Plane plane{blockIdx.x, height, width, reverse};
  const int chunks = ceil_div(width, TILE), tiles = ceil_div(height, TILE) * chunks;
  const int lane = threadIdx.x % TILE;
  Run<Acc> column_run{0, 0, 0};  // warp 0: the run of column `lane`, kept when chunks == 1
  Run<Acc> row_run{0, 0, 0};     // warp 1: the run of row `lane` of the current strip

  T staged_a[STAGED], staged_b[STAGED], staged_g[STAGED];
  const Tile first(0, height, width);
  if (a != nullptr) stage(a, plane, first, staged_a);
  if (b != nullptr) stage(b, plane, first, staged_b);
  stage(grad_out, plane, first, staged_g);

  for (int t = 0; t < tiles; ++t) {
    const Tile tile(t, height, width);
    if (a != nullptr) commit(staged_a, tile, a_tile);
    if (b != nullptr) commit(staged_b, tile, b_tile);
    commit(staged_g, tile, g_tile);
    __syncthreads();
    if (t + 1 < tiles) {
      const Tile next(t + 1, height, width);
      if (a != nullptr) stage(a, plane, next, staged_a);
      if (b != nullptr) stage(b, plane, next, staged_b);
      stage(grad_out, plane, next, staged_g);
    }

    if (threadIdx.x < TILE) {
      // Warp 0: thread c scans column c of the tile, turning a_tile into the gradient of a.
      const int c = lane;
      if (a != nullptr && c < tile.cols) {
        const int col = tile.col0 + c;
        const int64_t slot = plane.id * width + col;
        Run<Acc> run = column_run;
        if (tile.row0 > 0 && chunks > 1) run = {carry_best[slot], carry_at[slot], carry_sum[slot]};
        // A complete run: its sum is the gradient at its maximum. If the maximum lies in this
        // tile, the sum goes into the tile (stored with it in step 3); otherwise its tile was
        // stored earlier, and the sum goes straight to global memory, once.
        auto finish = [&](const Run<Acc>& done) {
          if (done.at >= tile.row0)
            a_tile[done.at - tile.row0][c] = done.sum;
          else
            grad_a[plane.index(done.at, col)] = static_cast<T>(done.sum);
        };
        for (int r = 0; r < tile.rows; ++r) {
          const int row = tile.row0 + r;
          const Acc value = a_tile[r][c], grad = g_tile[r][c];
          a_tile[r][c] = 0;  // not a maximum, unless a finished run says so later
          if (row == 0 || greater(value, run.best)) {
            if (row > 0) finish(run);
            run = {value, row, grad};  // a new maximum starts a new run
          } else {
            run.sum += grad;
          }
        }
        if (tile.row0 + tile.rows == height) {
          finish(run);  // the end of the column completes the last run
        } else if (chunks > 1) {
          carry_best[slot] = run.best;
          carry_at[slot] = run.at;
          carry_sum[slot] = run.sum;
        }
        column_run = run;
      }
    } else {
      // Warp 1: thread r scans row r of the tile, turning b_tile into the gradient of b.
      const int r = lane;
      if (b != nullptr && r < tile.rows) {
        const int row = tile.row0 + r;
        Run<Acc> run = row_run;
        auto finish = [&](const Run<Acc>& done) {
          if (done.at >= tile.col0)
            b_tile[r][done.at - tile.col0] = done.sum;
          else
            grad_b[plane.index(row, done.at)] = static_cast<T>(done.sum);
        };
        for (int c = 0; c < tile.cols; ++c) {
          const int col = tile.col0 + c;
          const Acc value = b_tile[r][c], grad = g_tile[r][c];
          b_tile[r][c] = 0;
          if (col == 0 || greater(value, run.best)) {
            if (col > 0) finish(run);
            run = {value, col, grad};
          } else {
            run.sum += grad;
          }
        }
        if (tile.col0 + tile.cols == width) finish(run);
        row_run = run;
      }
    }
    __syncthreads();

    if (a != nullptr) store(a_tile, plane, tile, grad_a);
    if (b != nullptr) store(b_tile, plane, tile, grad_b);
    __syncthreads();
  }
}

const char* launch_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

// What is wrong with the sizes, or nullptr. The grid has one block per plane, and CUDA
// allows at most 2^31 - 1 blocks.
const char* size_problem(int64_t planes, int height, int width) {
  if (planes < 1 || height < 1 || width < 1) return "corner_pool: every size must be at least 1";
  if (planes > INT32_MAX) return "corner_pool: more than 2^31 - 1 planes (B * C)";
  return nullptr;
}

}  // namespace

template <typename T>
const char* launch_forward(const T* a, const T* b, T* out,
                           typename Accumulate<T>::type* column_carry, int64_t planes,
                           int height, int width, bool reverse, void* stream) {
  if (const char* problem = size_problem(planes, height, width)) return problem;
  LAUNCH_KERNEL(forward_kernel<T>, static_cast<unsigned int>(planes), THREADS,
                static_cast<cudaStream_t>(stream))(a, b, out, column_carry, height, width, reverse);
  return launch_error();
}

template <typename T>
const char* launch_backward(const T* a, const T* b, const T* grad_out, T* grad_a, T* grad_b,
                            typename Accumulate<T>::type* carry_best, int32_t* carry_at,
                            typename Accumulate<T>::type* carry_sum, int64_t planes, int height,
                            int width, bool reverse, void* stream) {
  if (const char* problem = size_problem(planes, height, width)) return problem;
  LAUNCH_KERNEL(backward_kernel<T>, static_cast<unsigned int>(planes), THREADS,
                static_cast<cudaStream_t>(stream))(a, b, grad_out, grad_a, grad_b, carry_best,
                                                   carry_at, carry_sum, height, width, reverse);
  return launch_error();
}

#define CORNER_POOL_INSTANTIATE(T)                                                          \
  template const char* launch_forward<T>(const T*, const T*, T*, Accumulate<T>::type*,       \
                                         int64_t, int, int, bool, void*);                    \
  template const char* launch_backward<T>(const T*, const T*, const T*, T*, T*,              \
                                          Accumulate<T>::type*, int32_t*,                    \
                                          Accumulate<T>::type*, int64_t, int, int, bool,     \
                                          void*);

CORNER_POOL_INSTANTIATE(float)
CORNER_POOL_INSTANTIATE(double)
CORNER_POOL_INSTANTIATE(c10::Half)
CORNER_POOL_INSTANTIATE(c10::BFloat16)

}  // namespace corner_pool
