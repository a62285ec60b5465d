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
// a lane can also read 16 bytes in one instruction (a *vector* load).
//
// Corner pooling does one comparison and one addition per number, so its speed is the speed
// at which it moves bytes, and the limit is the memory bandwidth only if the warps issue few
// enough instructions per byte, and keep enough bytes on their way from memory. The kernels
// below are written for that: no shared memory and no __syncthreads(); each lane loads and
// stores 16 bytes at a time (VEC numbers: 4 float32, 8 bfloat16); the loads of several rows
// leave before the first is used; addresses inside a plane are 32-bit offsets.
//
// What is computed
// ----------------
// Top-left: out = top(a) + left(b); top(a)[i][j] is the maximum of a over rows i..H-1 of
// column j, left(b)[i][j] the maximum of b over columns j..W-1 of row i: scans that start at
// the bottom row and at the rightmost column. Bottom-right: out = bottom(a) + right(b), scans
// from the top row and the leftmost column. `Reverse` (a template parameter) is true for the
// top-left pool: its scans run towards smaller indices.
//
// Forward: a group of lanes per plane, rows in scan order
// -------------------------------------------------------
// A *group* of G lanes (G a power of two, the fewest whose VEC columns each cover a row, at
// most 32) owns a plane: lane g of the group holds the VEC consecutive columns g VEC ..
// g VEC + VEC - 1 of a *chunk* of G VEC columns, and the group walks the rows in scan order,
// 8 rows at a time (6 for 2-byte types): first the loads of the rows, then their scans.
// A warp holds 32 / G groups, so a narrow map keeps every lane busy (a 128-column bfloat16
// row needs 16 lanes: a warp pools two planes). For each row a lane has its VEC values of a
// and of b:
//
//   vertical   (a): the running maximum of each of its columns stays in its registers;
//   horizontal (b): the row's running maximum is a *scan across the group*: each lane scans
//              its VEC values, then the lanes combine their totals in log2(G) shuffle steps
//              (1, 2, 4, ... lanes apart), and each lane folds in the total of the lanes
//              before it.
//
// Taking a maximum in this order instead of one value after the other changes nothing: the
// running maximum keeps the first of the largest values met (see `first_max`), and "the first
// largest value" of a sequence is the same however its parts are grouped. So the result is
// the reference's, bit for bit. A row wider than 32 VEC columns is walked chunk after chunk
// in scan order; between chunks each row's maximum waits in a register, or in `row_carry`.
//
// Narrow rows: several to a vector
// --------------------------------
// Rows narrower than a vector, W < VEC, would leave most of a lane's 16 bytes unused (and are
// not vector-aligned). When W divides VEC and the plane's height is a multiple of P = VEC / W
// (and the maps are aligned), every vector holds P whole rows: the rows are *packed*
// (`packed_width` in corner_pool.h). The forward pools the plane as one of H / P rows of VEC
// columns, a group of one lane each: the lane takes its vector's numbers in scan order, the
// vertical maxima of the W columns going on from row to row, each row's horizontal scan
// starting afresh (`pool_packed`). The backward's walkers take them too (`Lines`): a column
// walker owns the W columns and steps P rows at a time; a row walker takes the P rows of a
// vector, each its own run. The width is a template parameter (`Packed`), so that every
// register index is a constant.
//
// Long columns and wide rows: segments
// ------------------------------------
// When the planes alone give too few warps to keep the memory busy (a few planes, or a
// single very tall one), each plane's rows are cut into *segments* of consecutive rows in
// scan order, each walked by a group of its own (see Plan in corner_pool.h). A segment must
// start from the maxima of its columns over all the rows before it: a first pass (the same
// kernel, `Maxima` = true) reads a and writes each segment's column maxima; a small kernel
// (prefix_kernel) turns them into the maxima of the segments before each one; the second
// pass starts each column from that value, then runs as above. The horizontal scan needs
// nothing: a row lies in one segment. If the warps are still too few and the rows are wide,
// each row's chunks are cut the same way into *column segments*: the first pass also writes
// each column segment's row maxima of b, prefix_kernel combines them, and the second pass
// starts each row of a column segment from the maxima of the column segments before it.
//
// Backward and the tie rule
// -------------------------
// Each output's gradient goes to the position of its maximum: the first maximum met in the
// scan, because the running argmax moves only on a strictly greater value. The outputs that
// share a maximum are consecutive, from the maximum to the step before the next new maximum:
// a *run*. A thread carries its run (best value, where it was met, sum of the gradients of
// the run so far). When a strictly greater value arrives, the run is complete and its sum is
// written at the old maximum's position; every other position gets 0. A line's run starts
// at its border as "maximum -inf, sum -0.0" (see Run), so a step is the same few
// instructions for every value, the first included, with no branch but the store. The sums
// must be added one after the other in scan order, as the PyTorch reference does
// (cornernet_ref/corner_pool/reference.py), to agree with it bit for bit, so each scanned
// line belongs to one thread (a line's sums cannot be split without changing their order),
// or each block of a long line (below). The backward has two kinds of threads, each its own
// warps of one launch:
//
//   column walkers (gradient of a): a thread owns VEC adjacent columns of a plane and walks
//     its rows; the lanes of a warp take consecutive column vectors, of one plane or, on
//     narrow planes, of several, so that a warp reads whole rows;
//   row walkers (gradient of b): a thread owns one row of a plane and walks its columns,
//     VEC at a time (each load of a lane reads 16 bytes of its own row); the lanes of a
//     warp take consecutive rows, of several planes when a plane has fewer than 32.
//
// A walker has AHEAD vectors of each map in flight. When the lines are few and long (one
// row or one column per plane, say) the walkers are too few to keep the memory busy with 4
// each, so they take DEEP_AHEAD (16, 8 in 2-byte types). Each gradient is written by the
// one thread that owns its line, or its block: no atomics, deterministic.
//
// Blocks of long lines
// --------------------
// A line longer than `sum_block` positions (1024 by default) would be one thread's serial
// walk: a plane of four lines of 2^23 numbers, four threads' work. Such a line is cut at
// every multiple of sum_block into blocks, each walked by a thread of its own, and the sums
// of the runs that cross blocks are defined block by block: each block's part of a run is
// summed in scan order, and the parts are added in scan order (the reference computes the
// same, see `scan_max_backward`; sum_block = 0 keeps every line whole, the official order).
// Three kernels around the walkers:
//
//   block_maxima_kernel  each block's maximum, per line; prefix_kernel (as in the forward)
//                        turns them into the maximum of the blocks before each block;
//   the walkers          a block after the line's first *enters* the run coming from the
//                        blocks before: it starts from their maximum, with no position,
//                        and keeps what it adds to that run until a new maximum completes
//                        it (its `head`); its own runs are written as on a whole line, but
//                        the last, which may go on in the next block, is kept (its `tail`);
//   join_kernel          a thread per tail: the run follows the blocks after its own in
//                        scan order, adding each block's head, until a new maximum
//                        completes it; its sum goes to its maximum.

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

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

// CORNER_POOL_ACCESS(base, offset, bytes, active, store): a note of each global load and
// store of the bulk of the traffic (the maps, not the carries), which the CPU build records
// to count the memory requests of a warp (benchmarks/corner_pool_access.py). Nothing on a
// GPU.
#ifndef CORNER_POOL_ACCESS
#define CORNER_POOL_ACCESS(base, offset, bytes, active, store)
#endif

namespace corner_pool {
namespace {

constexpr int WARPS = 4;  // warps per block
constexpr int AHEAD = 4;  // steps a backward walker loads before it uses the first
// ... and when a kind of walker is fewer than FEW_WALKERS threads (a few long lines): 16,
// or 8 in 2-byte types, whose rows that are not vector-aligned are loaded number by number,
// each number in a register of its own (16 ahead would spill).
template <typename T>
constexpr int DEEP_AHEAD = sizeof(T) == 2 ? 8 : 16;
constexpr int64_t FEW_WALKERS = 32768;
// The blocks whose heads join_kernel loads at a time, following a run across blocks.
constexpr int JOIN_AHEAD = 16;
// The forward's rows in flight: 8 vectors of 16 bytes per map and lane, so that 1000 warps
// keep about 8 MB on their way from memory. A 2-byte type has twice the columns per lane,
// and with them twice the running maxima and scan values in registers: 6 rows fit in the
// 128 registers without spilling, and 4 when its rows are loaded number by number.
template <typename T, bool Vectorized>
constexpr int FORWARD_AHEAD = sizeof(T) == 2 ? (Vectorized ? 6 : 4) : 8;
// Blocks per SM that the forward's registers must allow (at most 128 registers a thread):
// 16 warps an SM, 2112 on an H200, so that the 2048 planes of a training batch's float32
// maps are all resident at once. float64, which needs more, is left 2 (and no spills).
template <typename T>
constexpr int FORWARD_BLOCKS = sizeof(T) == 8 ? 2 : 4;
constexpr int THREADS = WARPS * WARP;
constexpr unsigned int ALL_LANES = 0xffffffffu;

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

// VEC values of T side by side, 16 bytes aligned: one instruction loads or stores them.
template <typename T>
struct alignas(16) Vector {
  T value[VEC<T>];
};

// The same 16 bytes as four 32-bit words: the form in which a vector load waits until its
// numbers are used. Kept as VEC numbers of a 2-byte T, the compiler gives each number a
// register of its own, and fills them right after the load (see `load`).
struct alignas(16) Words {
  uint32_t word[4];
};

// What `load` returns: the words of a vector load, or, for a row loaded number by number,
// the numbers themselves (each loaded straight into its own register).
template <typename T, bool Vectorized>
using Loaded = std::conditional_t<Vectorized, Words, Vector<T>>;

// -inf in each of the VEC numbers, in the form `load` returns.
template <typename T, bool Vectorized>
__device__ __forceinline__ Loaded<T, Vectorized> minus_infinity() {
  Vector<T> numbers;
#pragma unroll
  for (int j = 0; j < VEC<T>; ++j) numbers.value[j] = static_cast<T>(neutral<float>());
  if constexpr (Vectorized) {
    Words words;
    memcpy(&words, &numbers, sizeof(Words));
    return words;
  } else {
    return numbers;
  }
}

// The VEC numbers of `src` from `offset` on, as stored; `count` of them lie inside the row
// (VEC, or fewer at its end, or none: then nothing is read), the others are `outside`'s
// (-inf unless the caller gives them).
// `Vectorized`: every row starts on a 16-byte boundary, so `count` is VEC or none and one
// instruction loads them all.
//
// Nothing is done to the numbers here: they are unpacked and widened to Acc where they are
// used (`widen`). A load does not wait for memory; the first instruction that reads its
// registers does. An unpacking or a widening placed here would sit between this load and
// the next, so each load of a batch would wait for the one before it, and a lane would have
// one load in flight instead of a batch (benchmarks/corner_pool_sass.py counts the loads in
// flight in the machine code).
template <bool Vectorized, typename T>
__device__ __forceinline__ Loaded<T, Vectorized> load(
    const T* __restrict__ src, int offset, int count,
    Loaded<T, Vectorized> outside = minus_infinity<T, Vectorized>()) {
  Loaded<T, Vectorized> loaded = outside;
  if constexpr (Vectorized) {
    CORNER_POOL_ACCESS(src, offset, sizeof(Words), count > 0, false);
    if (count > 0) loaded = *reinterpret_cast<const Words*>(src + offset);
  } else {
#pragma unroll
    for (int j = 0; j < VEC<T>; ++j) {
      CORNER_POOL_ACCESS(src, offset + j, sizeof(T), j < count, false);
      if (j < count) loaded.value[j] = src[offset + j];
    }
  }
  return loaded;
}

// The j-th number of a loaded vector, widened for comparisons and sums.
template <typename Acc, typename T>
__device__ __forceinline__ Acc widen(const Vector<T>& loaded, int j) {
  return static_cast<Acc>(loaded.value[j]);
}

template <typename Acc, typename T>
__device__ __forceinline__ Acc widen(const Words& loaded, int j) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    // A bfloat16 is the upper half of a float32: one instruction makes either half of a
    // word a float (where the generic path below shifts the upper half down and back up).
    const uint32_t word = loaded.word[j / 2];
    const uint32_t bits = j % 2 == 1 ? word & 0xffff0000u : word << 16;
    float number;
    memcpy(&number, &bits, sizeof(float));
    return number;
  } else {
    // The bits of number j (little-endian: bytes j * sizeof(T) onwards), then the number.
    using Bits = std::conditional_t<sizeof(T) == 2, uint16_t,
                                    std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
    Bits bits;
    if constexpr (sizeof(T) == 8)
      bits = loaded.word[2 * j] | static_cast<uint64_t>(loaded.word[2 * j + 1]) << 32;
    else
      bits = static_cast<Bits>(loaded.word[j * sizeof(T) / 4] >> (8 * (j * sizeof(T) % 4)));
    T number;
    memcpy(&number, &bits, sizeof(T));
    return static_cast<Acc>(number);
  }
}

// Store the first `count` of `values` at `offset`, rounded once to T (`Vectorized` as for
// `load`: `count` is VEC or none).
template <bool Vectorized, typename T, typename Acc, int N>
__device__ __forceinline__ void store(T* __restrict__ dst, int offset, int count,
                                      const Acc (&values)[N]) {
  if constexpr (Vectorized) {
    Vector<T> stored;
#pragma unroll
    for (int j = 0; j < N; ++j) stored.value[j] = static_cast<T>(values[j]);
    CORNER_POOL_ACCESS(dst, offset, sizeof(Vector<T>), count > 0, true);
    if (count > 0) *reinterpret_cast<Vector<T>*>(dst + offset) = stored;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      CORNER_POOL_ACCESS(dst, offset + j, sizeof(T), j < count, true);
      if (j < count) dst[offset + j] = static_cast<T>(values[j]);
    }
  }
}

// Where plane `plane` starts in a (planes, H, W) tensor, or nullptr for an absent map.
template <typename T>
__device__ T* plane_start(T* tensor, int64_t plane, int height, int width) {
  return tensor == nullptr ? nullptr : tensor + plane * height * width;
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// The horizontal scan of one row chunk across a group of `lanes` lanes (`g`: this lane's
// place in it): on return, values[j] is the running maximum up to (and including) this
// lane's j-th column, in scan order, starting from `carry` (in the lane that starts the
// scan: the maximum of the chunks before, or -inf; -inf in the others). Returns the maximum
// of the whole chunk, in every lane of the group. Every lane of the warp calls it together.
template <bool Reverse, typename Acc, int N>
__device__ __forceinline__ Acc scan_row(Acc (&values)[N], Acc carry, int lanes, int g) {
  // This lane's own values, in scan order, after the carry (-inf but in the lane that
  // starts the scan, so the other lanes are unchanged by it).
  const int first_value = Reverse ? N - 1 : 0;
  values[first_value] = first_max(carry, values[first_value]);
#pragma unroll
  for (int step = 1; step < N; ++step) {
    const int j = Reverse ? N - 1 - step : step, before = Reverse ? j + 1 : j - 1;
    values[j] = first_max(values[before], values[j]);
  }
  // The lanes' totals: after the step of distance d, a lane holds the maximum of its own and
  // the 2d - 1 lanes before it in its group (in scan order: below it, or above it when
  // Reverse). The shuffles have the group's width: a lane with fewer than d lanes before it
  // in its group gets its own total back, and first_max(total, total) is total.
  Acc total = values[Reverse ? 0 : N - 1];
#pragma unroll
  for (int distance = 1; distance < WARP; distance *= 2) {  // a group has at most WARP lanes
    const Acc before = Reverse ? __shfl_down_sync(ALL_LANES, total, distance, lanes)
                               : __shfl_up_sync(ALL_LANES, total, distance, lanes);
    total = first_max(before, total);
  }
  // Fold the maximum of the lanes before this one into its values.
  // The lane that starts the scan has none: -inf, which changes no value (a select, where a
  // branch around the fold would cost its own instructions and divide the warp).
  const Acc shuffled = Reverse ? __shfl_down_sync(ALL_LANES, total, 1)
                               : __shfl_up_sync(ALL_LANES, total, 1);
  const Acc lanes_before = g == (Reverse ? lanes - 1 : 0) ? neutral<Acc>() : shuffled;
#pragma unroll
  for (int j = 0; j < N; ++j) values[j] = first_max(lanes_before, values[j]);
  return __shfl_sync(ALL_LANES, total, Reverse ? 0 : lanes - 1, lanes);
}

// One vector of packed rows (`packed_width` in corner_pool.h): N / W rows of W numbers, all
// in this lane, pooled without shuffles. The vertical scan goes on from row to row in
// column_max[0 .. W - 1]; each row's horizontal scan starts afresh, since the row lies whole
// in the vector. On return pooled[j] is V(a) + H(b) at number j, or the pool of the map given
// alone.
template <typename T, bool Reverse, int W, typename Acc, typename Numbers, int N>
__device__ __forceinline__ void pool_packed(const Numbers& a, const Numbers& b, bool has_a,
                                            bool has_b, Acc (&column_max)[N],
                                            Acc (&pooled)[N]) {
  Acc running = neutral<Acc>();  // H(b) along the current row
#pragma unroll
  for (int t = 0; t < N; ++t) {
    const int j = Reverse ? N - 1 - t : t;  // in scan order: the rows, and in each its columns
    const int column = j % W;
    if (t % W == 0) running = neutral<Acc>();  // a row's first number in scan order
    if (has_a) column_max[column] = first_max(column_max[column], widen<Acc, T>(a, j));
    if (has_b) running = first_max(running, widen<Acc, T>(b, j));
    pooled[j] = !has_a ? running : has_b ? column_max[column] + running : column_max[column];
  }
}

// One kernel for both passes, each group of lanes on one (plane, segment, column segment):
// its rows in scan order, and its chunks in scan order.
//
// Maxima = false: the forward proper, out = V(a) + H(b). Each column starts from the maxima
// of the segments before (column_maxima, when there are several segments), each row from
// the maxima of the column segments before (row_carry, when there are several).
// Maxima = true: the first pass, when there are several segments or column segments: for
// every segment but the last, the maximum of a over its rows, per column, into
// column_maxima[plane][segment][column]; for every column segment but the last, the maximum
// of b over its chunks, per row, into row_carry[plane][column segment][row]. prefix_kernel
// then turns them into the maxima of the segments before each one.
//
// Between the chunks of a column segment, a wide row's maximum so far waits in a register
// of the lane that starts its scan when the segment's rows fit in one batch of loads, else in
// row_carry[plane][column segment][row], read back by the lane that wrote it.
//
// Every lane of a warp runs the same loops the same number of times (a group with less or
// no work masks its loads and stores; column segments exist only when a group is a whole
// warp), so that the shuffles of the row scan always find all 32 lanes.
//
// `Packed` > 0: the plan's rows are vectors of packed rows of that width (then Vectorized,
// and a group is one lane: see `pool_packed`); 0: rows as they are.
template <typename T, bool Reverse, bool Vectorized, bool Maxima, int Packed>
__global__ void __launch_bounds__(THREADS, FORWARD_BLOCKS<T>)
    forward_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                   typename Accumulate<T>::type* __restrict__ row_carry,
                   typename Accumulate<T>::type* __restrict__ column_maxima, Plan plan,
                   int64_t planes, int height, int width) {
  using Acc = typename Accumulate<T>::type;
  constexpr int N = VEC<T>;
  const int lane = threadIdx.x % WARP, g = lane % plan.lanes;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * WARPS + threadIdx.x / WARP;
  const int64_t unit = warp * (WARP / plan.lanes) + lane / plan.lanes;
  const int64_t units_per_plane = static_cast<int64_t>(plan.segments) * plan.column_segments;
  const int64_t plane = unit / units_per_plane;
  const int segment = static_cast<int>(unit % units_per_plane / plan.column_segments);
  const int column_segment = static_cast<int>(unit % plan.column_segments);
  const bool scans_b = b != nullptr;  // the same in every lane: the row scan's shuffles
  // What the first pass computes here: the last segment's column maxima, and the last
  // column segment's row maxima, are of no use (nothing comes after them).
  const bool columns_wanted = a != nullptr && (!Maxima || segment + 1 < plan.segments);
  const bool rows_wanted = b != nullptr && (!Maxima || column_segment + 1 < plan.column_segments);
  const bool working = plane < planes && (columns_wanted || rows_wanted);
  const int first_step = segment * plan.segment_rows;  // in scan order
  const int steps = working ? min(plan.segment_rows, height - first_step) : 0;
  const int first_k = column_segment * plan.segment_chunks;  // chunks, in scan order
  const int end_k = min(first_k + plan.segment_chunks, plan.chunks);
  if (working) {
    a = columns_wanted ? plane_start(a, plane, height, width) : nullptr;
    b = rows_wanted ? plane_start(b, plane, height, width) : nullptr;
    out = Maxima ? nullptr : plane_start(out, plane, height, width);
  }
  const bool starts = g == (Reverse ? plan.lanes - 1 : 0);  // starts the row scan
  Acc* carry = row_carry == nullptr || !working || b == nullptr
                   ? nullptr
                   : row_carry + (plane * plan.column_segments + column_segment) * height;
  // When the segment's rows fit in one batch of R (one row, say), each row's maximum over
  // the chunks before stays in a register of the lane that starts its scan, not in memory:
  // a chunk then waits for its own loads only.
  constexpr int R = FORWARD_AHEAD<T, Vectorized>;  // rows per batch (below)
  const bool kept_in_registers = plan.segment_rows <= R;
  // Each row of a batch: its maximum over the chunks before (see `before` below).
  Acc before[R];
#pragma unroll
  for (int r = 0; r < R; ++r) before[r] = neutral<Acc>();
  // The batch's rows of a and b, as loaded (widened where used, see `load`). On aligned rows,
  // a row past the segment's end and a lane past the row's end load nothing and keep what
  // they held, where setting them to -inf would take 8 instructions a row in bfloat16.
  // Nothing computed from them is stored, and no other lane's scan sees them: a lane past
  // the row's end lies in the first chunk that a top-left (Reverse) row scan walks, and holds
  // the -inf set here; in a bottom-right one it comes after every lane with columns, in the
  // last chunk, whose total no one reads. Loaded number by number, a lane at the row's end
  // holds some of its columns and not others, and the others must be -inf.
  Loaded<T, Vectorized> a_rows[R], b_rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) a_rows[r] = b_rows[r] = minus_infinity<T, Vectorized>();

  for (int k = first_k; k < end_k; ++k) {
    const int chunk = Reverse ? plan.chunks - 1 - k : k;  // chunks in scan order
    const int column = (chunk * plan.lanes + g) * N;      // this lane's first column
    const int count = working ? min(N, width - column) : 0;  // of its columns, those here
    Acc column_max[N];  // vertical: the running maxima of a
#pragma unroll
    for (int j = 0; j < N; ++j) column_max[j] = neutral<Acc>();
    if (!Maxima && a != nullptr && count > 0 && segment > 0) {
      // The maxima of the segments before this one (prefix_kernel has combined them).
      const Acc* maxima = column_maxima + (plane * plan.segments + segment) * width + column;
#pragma unroll
      for (int j = 0; j < N; ++j)
        if (j < count) column_max[j] = maxima[j];
    }

    // Rows in scan order, R at a time: first the loads of all of them, so that they travel
    // from memory together (a load does not wait for its value; the instruction that uses
    // the value does), then the scans.
    for (int first_row = 0; first_row < plan.segment_rows; first_row += R) {
      int rows[R];  // rows[r] < 0: past the segment
      // Each row's maximum over the chunks before: over those of this column segment
      // (kept in `before` from the chunk before, or row_carry), or, at its first chunk,
      // over the column segments before (row_carry, after prefix_kernel). Read from memory
      // with the rows, not where the scan needs it, so that it travels with them.
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int step = first_step + first_row + r;
        rows[r] = first_row + r < steps ? (Reverse ? height - 1 - step : step) : -1;
        const int inside = rows[r] >= 0 ? count : 0;  // nothing past the segment's end
        const int offset = inside > 0 ? rows[r] * width + column : 0;
        a_rows[r] = load<Vectorized>(a, offset, a == nullptr ? 0 : inside,
                                     Vectorized ? a_rows[r] : minus_infinity<T, Vectorized>());
        b_rows[r] = load<Vectorized>(b, offset, b == nullptr ? 0 : inside,
                                     Vectorized ? b_rows[r] : minus_infinity<T, Vectorized>());
        const bool carried = carry != nullptr && starts && rows[r] >= 0;
        const bool in_memory = carried && (k > first_k ? !kept_in_registers
                                                       : !Maxima && column_segment > 0);
        if (in_memory)
          before[r] = carry[rows[r]];
        else if (!(carried && k > first_k && kept_in_registers))
          before[r] = neutral<Acc>();
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (first_row + r >= plan.segment_rows) break;  // the same in every lane
        // out = V(a) + H(b), computed in Acc and rounded once to T, as PyTorch rounds a + b.
        Acc pooled[N];
        if constexpr (Packed > 0) {
          pool_packed<T, Reverse, Packed>(a_rows[r], b_rows[r], a != nullptr, scans_b,
                                          column_max, pooled);
        } else {
          if (a != nullptr) {
#pragma unroll
            for (int j = 0; j < N; ++j)
              column_max[j] = first_max(column_max[j], widen<Acc, T>(a_rows[r], j));
          }
          Acc row[N] = {};  // b's row: the row scan turns it into the running maxima
          if (scans_b) {  // the same in every lane, those of groups with no work too
            const bool carried = carry != nullptr && starts && rows[r] >= 0;
#pragma unroll
            for (int j = 0; j < N; ++j) row[j] = widen<Acc, T>(b_rows[r], j);
            const Acc row_max = scan_row<Reverse>(row, before[r], plan.lanes, g);
            if (carried && k + 1 < end_k) {
              if (kept_in_registers)
                before[r] = row_max;
              else
                carry[rows[r]] = row_max;
            } else if (carried && Maxima) {
              carry[rows[r]] = row_max;  // this column segment's row maximum
            }
          }
#pragma unroll
          for (int j = 0; j < N; ++j)
            pooled[j] = a == nullptr ? row[j] : scans_b ? column_max[j] + row[j] : column_max[j];
        }
        if (!Maxima) {
          // The offset again, as for the loads: kept from there, R offsets would take R
          // registers, and a lambda shared by the two sites counted 9 more warp instructions
          // per KB in the float32 SASS.
          const int inside = rows[r] >= 0 ? count : 0;
          store<Vectorized>(out, inside > 0 ? rows[r] * width + column : 0, inside, pooled);
        }
      }
    }
    if (Maxima && a != nullptr && count > 0) {
      Acc* maxima = column_maxima + (plane * plan.segments + segment) * width + column;
#pragma unroll
      for (int j = 0; j < N; ++j)
        if (j < count) maxima[j] = column_max[j];
    }
  }
}

// Between the two passes: each segment's maxima become the maxima of the segments before
// it, for every line of a plane: `values` holds [plane][segment][line], and afterwards
// values[plane][s][line] is the maximum of segments 0 .. s-1, combined in scan order (the
// first pass wrote each segment's own; the last segment's are neither written nor needed).
// Lines are columns (the segments' column maxima of a) or rows (the column segments' row
// maxima of b). A warp per (plane, line): lane l takes a block of consecutive segments,
// folds them, the lanes combine their totals in shuffle steps as the row scan does, and
// each lane walks its block again writing the running maximum before each segment. So the
// second pass reads one value per line, however many segments there are.
template <typename Acc>
__global__ void __launch_bounds__(THREADS)
    prefix_kernel(Acc* __restrict__ values, int64_t planes, int segments, int lines) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * WARPS + threadIdx.x / WARP;
  if (warp >= planes * lines) return;  // the whole warp
  const int lane = threadIdx.x % WARP;
  Acc* maxima = values + (warp / lines) * segments * lines + warp % lines;
  const int known = segments - 1;  // segments whose maxima the first pass wrote
  const int block = static_cast<int>(ceil_div(known, WARP));
  const int first = min(lane * block, known), last = min(first + block, known);
  Acc total = neutral<Acc>();
  for (int s = first; s < last; ++s) total = first_max(total, maxima[s * lines]);
#pragma unroll
  for (int distance = 1; distance < WARP; distance *= 2) {  // the lanes before, inclusive
    const Acc before = __shfl_up_sync(ALL_LANES, total, distance);
    if (lane >= distance) total = first_max(before, total);
  }
  Acc running = __shfl_up_sync(ALL_LANES, total, 1);  // the blocks before this lane's
  if (lane == 0) running = neutral<Acc>();
  for (int s = first; s < last; ++s) {
    const Acc own = maxima[s * lines];
    maxima[s * lines] = running;
    running = first_max(running, own);
  }
  if (first < last && last == known) maxima[known * lines] = running;  // the last segment's
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// The run of one scanned line. It starts as a run of maximum -inf at the line's first
// position with a sum of -0.0, which adds nothing (-0.0 + g is g, bit for bit, -0.0 and
// +0.0 included): the first value then either starts a run there, as in the reference, or
// is -inf itself and extends the same run. So every step is the same few instructions,
// with no case for "no value yet" and no branch but the store.
//
// A block after the first of a long line (see "Blocks of long lines" above) *enters* the
// line's run: maximum the maximum of the blocks before, and no position (`at` = -1), since
// that maximum lies in another block. What the block adds to that run until its first new
// maximum is its `head`; the join kernel adds it to the run's sum from the blocks before.
template <typename Acc>
struct Run {
  Acc best;  // the current maximum
  int at;    // its offset in the plane; -1 before a block's first new maximum
  Acc sum;   // the gradients of the outputs since then, added in scan order
  Acc head;  // an entered run's sum in this block, once a new maximum has completed it

  static __device__ __forceinline__ Run start(int first) {
    return {neutral<Acc>(), first, -Acc(0), -Acc(0)};
  }

  static __device__ __forceinline__ Run enter(Acc maximum) {
    return {maximum, -1, -Acc(0), -Acc(0)};
  }

  // One more value of the line, at `offset`, whose output has gradient `grad`. A new maximum
  // completes the run: its sum goes to the old maximum (after the zero stored there before;
  // at the line's first position, the -0.0 stored by a run that starts there is replaced
  // when that run completes), or to `head` if the run entered the block (`Blocked`: a
  // walker of a block, which may have entered its run; the test costs two instructions a
  // number, which the walkers of whole lines do without).
  template <bool Blocked, typename T>
  __device__ __forceinline__ void step(Acc value, Acc grad, int offset, T* __restrict__ dst) {
    const bool moved = greater(value, best);
    CORNER_POOL_ACCESS(dst, at, sizeof(T), moved && (!Blocked || at >= 0), true);
    if constexpr (Blocked) {
      if (moved && at >= 0) dst[at] = static_cast<T>(sum);
      head = moved && at < 0 ? sum : head;
    } else {
      if (moved) dst[at] = static_cast<T>(sum);
    }
    best = moved ? value : best;
    at = moved ? offset : at;
    sum = moved ? grad : sum + grad;
  }
};

// What the blocks of one kind of line (columns of a, or rows of b) carry between the
// backward's kernels, each an array [plane][block in scan order][line]. `count` = 1: the
// lines are walked whole, and nothing here is used.
template <typename Acc>
struct Blocks {
  int count;      // blocks per line
  int length;     // positions per block (the last of a line may have fewer); or per line
  Acc* maxima;    // each block's maximum; after prefix_kernel, the maximum of those before
  Acc* heads;     // what the block adds to the run that enters it (all of it, if no new
                  // maximum completes that run in the block)
  Acc* tails;     // the sum of the block's last run, if a new maximum started one in it
  int* tail_at;   // where that run's maximum lies (an offset in the plane), or -1: none

  // The blocks of `lines` lines (of all planes) of `length` positions, their arrays taken
  // from `scratch`, which then points past them (blocked_bytes in corner_pool.h).
  static Blocks carve(char*& scratch, int64_t lines, int length, int sum_block) {
    Blocks blocks{sum_blocks(length, sum_block), length, nullptr, nullptr, nullptr, nullptr};
    if (blocks.count == 1) return blocks;
    blocks.length = sum_block;
    const int64_t values = lines * blocks.count;
    blocks.maxima = reinterpret_cast<Acc*>(scratch);
    blocks.heads = blocks.maxima + values;
    blocks.tails = blocks.heads + values;
    blocks.tail_at = reinterpret_cast<int*>(blocks.tails + values);
    scratch += blocked_bytes<Acc>(lines, blocks.count);  // Accumulate<Acc> is Acc
    return blocks;
  }
};

// How the VEC numbers of one loaded vector belong to the lines a walker scans (`Along`: rows,
// else columns; `Packed`: rows of that width packed in each vector, see `packed_width` in
// corner_pool.h; 0: rows as they are). A vector holds ROWS rows of ROW numbers of a walker's
// lines: one row of VEC columns (a column walker: VEC lines), a piece of one row (a row
// walker: one line), or ROWS packed rows (a column walker: their ROW columns; a row walker:
// each row a line).
template <typename T, bool Reverse, bool Along, int Packed>
struct Lines {
  static constexpr int N = VEC<T>;
  static constexpr int ROW = Packed > 0 ? Packed : N;
  static constexpr int ROWS = N / ROW;
  static constexpr int COUNT = Along ? ROWS : ROW;  // lines per walker, at most
  // The t-th number of the vector in scan order (a row's numbers run backwards when Reverse,
  // and so do packed rows; the VEC columns of one row are independent lines: any order).
  static __device__ __forceinline__ int number(int t) {
    return Reverse && (Along || Packed > 0) ? N - 1 - t : t;
  }
  // The line of number j, among the walker's.
  static __device__ __forceinline__ int line(int j) { return Along ? j / ROW : j % ROW; }
};

// The share of one thread of the backward (a *walker*): `lines` adjacent lines of one plane
// (VEC columns, or one row; with packed rows, the plane's W columns, or the rows of one
// vector), over one block of positions, walked in scan order from the offset `first` on,
// `steps` steps a `stride` apart in memory (negative when the scan runs towards smaller
// offsets). A column walker steps +-W, a row at a time (a vector of packed rows at a time),
// through its lines; a row walker steps +-VEC through its row, a vector at a time, and its
// block ends at `row_end`. `slot`: where its first line's values lie in the Blocks arrays.
struct Walker {
  bool valid;  // false: past the last unit of the launch
  int64_t plane;
  int first, steps, stride, lines, row_end;
  int scan_block;  // the block's place in scan order (0: the line's first block)
  int64_t slot;

  // Unit `unit` of one kind: column vectors (VEC columns of one plane) or rows, numbered
  // plane by plane, block by block in index order, then unit by unit in the block, so that
  // the lanes of a warp take adjacent column vectors, or rows, of one block.
  // `Blocked`: the lines may be cut into blocks (else `blocks` is not read: whole lines).
  // `Packed`: rows of that width, ROWS to a vector (block lengths are multiples of ROWS).
  template <typename T, bool Reverse, bool Blocked, int Packed, typename Acc>
  static __device__ __forceinline__ Walker of(int64_t unit, bool column, const Blocks<Acc>& blocks,
                                              int64_t planes, int height, int width) {
    constexpr int N = VEC<T>, ROWS = Lines<T, Reverse, false, Packed>::ROWS;
    // Column vectors per row: VEC columns each, or the whole row of packed rows.
    const int vectors = Packed > 0 ? 1 : static_cast<int>(ceil_div(width, N));
    const int per_block = column ? vectors : height / ROWS;
    const int count = Blocked ? blocks.count : 1;
    Walker walker{};
    walker.valid = unit < planes * count * per_block;
    if (!walker.valid) return walker;
    walker.plane = unit / (static_cast<int64_t>(count) * per_block);
    const int rest = static_cast<int>(unit % (static_cast<int64_t>(count) * per_block));
    const int block = rest / per_block, index = rest % per_block;
    walker.scan_block = Reverse ? count - 1 - block : block;
    // The block's positions along the line, in index order: start .. end - 1.
    const int length = column ? height : width;
    const int start = count > 1 ? block * blocks.length : 0;
    const int end = count > 1 ? min(start + blocks.length, length) : length;
    const int lines_per_plane = column ? width : height;
    if (column) {
      const int at = index * N;  // the walker's first column
      // In the block's border row, or the border vector of packed rows.
      walker.first = (Reverse ? end - ROWS : start) * width + at;
      walker.steps = (end - start) / ROWS;
      walker.stride = (Reverse ? -width : width) * ROWS;
      walker.lines = Packed > 0 ? Packed : min(N, width - at);
      walker.row_end = 0;
      walker.slot = (walker.plane * count + walker.scan_block) * lines_per_plane + at;
    } else if (Packed > 0) {  // the ROWS rows of one vector, each a line of one step
      walker.first = index * N;
      walker.steps = 1;
      walker.stride = N;
      walker.lines = ROWS;
      walker.row_end = walker.first + N;
      walker.slot = (walker.plane * count + walker.scan_block) * lines_per_plane + index * ROWS;
    } else {
      const int row_start = index * width;
      const int first_vector = start / N, end_vector = static_cast<int>(ceil_div(end, N));
      walker.first = row_start + (Reverse ? (end_vector - 1) * N : start);
      walker.steps = end_vector - first_vector;
      walker.stride = Reverse ? -N : N;
      walker.lines = 1;
      walker.row_end = row_start + end;
      walker.slot = (walker.plane * count + walker.scan_block) * lines_per_plane + index;
    }
    return walker;
  }

  // The offset of step `step` (0 .. steps - 1; a step past the end is given the first's).
  __device__ __forceinline__ int offset(int step) const {
    return first + (step < steps ? step : 0) * stride;
  }

  // How many of the VEC numbers at `at`, step `step`'s offset, lie in the walker's lines:
  // VEC on aligned rows, none past the end. (The counts also keep the loads predicated:
  // loads that nothing guards are moved by the compiler past the end-of-line test below,
  // next to their use, one step at a time.)
  template <typename T, bool Vectorized, bool Along>
  __device__ __forceinline__ int count(int step, int at) const {
    if (step >= steps) return 0;
    return Vectorized ? VEC<T> : Along ? min(VEC<T>, row_end - at) : lines;
  }
};

// `visit(offset, count, values, grads)` for each step of a walker in scan order: its offset,
// how many of its numbers lie in the walker's lines (Walker::count), and the vectors of
// `map` and (`Grads`; else not loaded) of `grad_out` there. The steps go Ahead at a time, as
// the forward's rows: first the loads of a batch, so that they travel from memory together,
// then the visits.
template <typename T, bool Vectorized, bool Along, int Ahead, bool Grads, typename Visit>
__device__ __forceinline__ void visit_steps(const T* __restrict__ map,
                                            const T* __restrict__ grad_out, const Walker& walker,
                                            Visit&& visit) {
  for (int first_step = 0; first_step < walker.steps; first_step += Ahead) {
    Loaded<T, Vectorized> values[Ahead], grads[Ahead];  // widened where used (`load`)
    int offsets[Ahead], counts[Ahead];
#pragma unroll
    for (int r = 0; r < Ahead; ++r) {
      offsets[r] = walker.offset(first_step + r);
      counts[r] = walker.count<T, Vectorized, Along>(first_step + r, offsets[r]);
      values[r] = load<Vectorized>(map, offsets[r], counts[r]);
      if constexpr (Grads) grads[r] = load<Vectorized>(grad_out, offsets[r], counts[r]);
    }
#pragma unroll
    for (int r = 0; r < Ahead; ++r) {
      // A step past the end loaded nothing: its numbers read as -inf, which moves no maximum,
      // but its gradients (-inf too) must not be added to a run.
      if (Grads && first_step + r >= walker.steps) break;
      visit(offsets[r], counts[r], values[r], grads[r]);
    }
  }
}

// The walker's scan of its block, Ahead vectors of each map in flight (`Along`: a row
// walker; `Packed` as for Lines): the zeros and the completed runs' sums into `grad`; at the
// end, each line's last run into `grad` (a whole line), or (`Blocked`: lines cut into
// blocks) what its block carries into `blocks` for join_kernel.
template <typename T, bool Reverse, bool Vectorized, bool Along, int Packed, int Ahead,
          bool Blocked>
__device__ __forceinline__ void walk(const T* __restrict__ map, const T* __restrict__ grad_out,
                                     T* __restrict__ grad, const Walker& walker,
                                     const Blocks<typename Accumulate<T>::type>& blocks) {
  using Acc = typename Accumulate<T>::type;
  using Of = Lines<T, Reverse, Along, Packed>;
  constexpr int N = VEC<T>;
  const Acc zeros[N] = {};
  Run<Acc> runs[Of::COUNT];
#pragma unroll
  for (int k = 0; k < Of::COUNT; ++k) {
    // Line k's scan starts at its border number: in the walker's first vector, its first
    // row's when Reverse (packed rows) or its own last (a row, which may end mid-vector).
    const int border =
        Along ? (Reverse ? walker.row_end - 1 - (Of::COUNT - 1 - k) * Of::ROW
                         : walker.first + k * Of::ROW)
              : walker.first + (Reverse ? N - Of::ROW : 0) + k;
    runs[k] = Blocked && walker.scan_block > 0 && k < walker.lines
                  ? Run<Acc>::enter(blocks.maxima[walker.slot + k])
                  : Run<Acc>::start(border);
  }
  visit_steps<T, Vectorized, Along, Ahead, true>(
      map, grad_out, walker,
      [&](int offset, int count, const Loaded<T, Vectorized>& values,
          const Loaded<T, Vectorized>& grads) {
        store<Vectorized>(grad, offset, count, zeros);  // not a maximum, unless a run says so
#pragma unroll
        for (int t = 0; t < N; ++t) {
          const int j = Of::number(t);
          if (Vectorized || j < count)
            runs[Of::line(j)].template step<Blocked>(
                widen<Acc, T>(values, j), widen<Acc, T>(grads, j), offset + j, grad);
        }
      });
#pragma unroll
  for (int k = 0; k < Of::COUNT; ++k) {
    if (k >= walker.lines) break;
    if constexpr (!Blocked) {
      CORNER_POOL_ACCESS(grad, runs[k].at, sizeof(T), true, true);
      grad[runs[k].at] = static_cast<T>(runs[k].sum);  // the last run
    } else {
      const int64_t slot = walker.slot + k;
      blocks.heads[slot] = runs[k].at < 0 ? runs[k].sum : runs[k].head;
      blocks.tails[slot] = runs[k].sum;
      blocks.tail_at[slot] = runs[k].at;
    }
  }
}

// The first of the three kernels of blocked lines: each block's maximum, per line, into
// blocks.maxima (prefix_kernel then makes it the maximum of the blocks before). A thread per
// block of a column vector (`column`) or of a row, numbered as the walkers are; the last
// block in scan order is not needed.
template <typename T, bool Reverse, bool Vectorized, bool Along, int Packed>
__global__ void __launch_bounds__(THREADS)
    block_maxima_kernel(const T* __restrict__ map, Blocks<typename Accumulate<T>::type> blocks,
                        int64_t planes, int height, int width) {
  using Acc = typename Accumulate<T>::type;
  using Of = Lines<T, Reverse, Along, Packed>;
  constexpr int N = VEC<T>;
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x;
  const Walker walker =
      Walker::of<T, Reverse, true, Packed>(unit, !Along, blocks, planes, height, width);
  if (!walker.valid || walker.scan_block == blocks.count - 1) return;
  map = plane_start(map, walker.plane, height, width);
  Acc best[Of::COUNT];
#pragma unroll
  for (int k = 0; k < Of::COUNT; ++k) best[k] = neutral<Acc>();
  // Blocks are long lines cut, whose walkers are few: DEEP_AHEAD loads in flight, as theirs.
  visit_steps<T, Vectorized, Along, DEEP_AHEAD<T>, false>(
      map, nullptr, walker, [&](int, int count, const Loaded<T, Vectorized>& values, const auto&) {
#pragma unroll
        for (int t = 0; t < N; ++t) {
          const int j = Of::number(t), k = Of::line(j);
          if (Vectorized || j < count) best[k] = first_max(best[k], widen<Acc, T>(values, j));
        }
      });
#pragma unroll
  for (int k = 0; k < Of::COUNT; ++k)
    if (k < walker.lines) blocks.maxima[walker.slot + k] = best[k];
}

// The backward's warps are column walkers' (the gradient of a) and row walkers' (that of
// b): `column_warps` of the first kind among `warps`, interleaved in proportion, so that the
// two read the same planes at about the same time and the second read of the output
// gradient comes mostly from the L2 cache. The lanes of a warp take consecutive units of
// their kind (see Walker::of). `ColumnAhead` and `RowAhead` are each kind's steps loaded
// ahead, 0 for a launch without that kind: a few long lines take a launch of their own,
// whose deep loads ahead need registers that would cut the occupancy of the other kind's
// many short walkers. `Blocked`: walkers of blocks (the launch's kind of lines is cut into
// blocks), each launched alone. `Packed` as for Lines.
template <typename T, bool Reverse, bool Vectorized, int ColumnAhead, int RowAhead, bool Blocked,
          int Packed>
__global__ void __launch_bounds__(THREADS)
    backward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                    const T* __restrict__ grad_out, T* __restrict__ grad_a,
                    T* __restrict__ grad_b, Blocks<typename Accumulate<T>::type> column_blocks,
                    Blocks<typename Accumulate<T>::type> row_blocks, int64_t planes,
                    int height, int width, int64_t warps, int64_t column_warps) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * WARPS + threadIdx.x / WARP;
  if (warp >= warps) return;
  // Warp w is the k-th column warp, k = floor(w C / warps), when k moves at w.
  const int64_t columns_before = warp * column_warps / warps;
  const bool column = (warp + 1) * column_warps / warps > columns_before;
  const int64_t unit = (column ? columns_before : warp - columns_before) * WARP + threadIdx.x % WARP;
  const auto& blocks = column ? column_blocks : row_blocks;
  const Walker walker =
      Walker::of<T, Reverse, Blocked, Packed>(unit, column, blocks, planes, height, width);
  if (!walker.valid) return;
  const T* map = plane_start(column ? a : b, walker.plane, height, width);
  const T* grad = plane_start(grad_out, walker.plane, height, width);
  T* result = plane_start(column ? grad_a : grad_b, walker.plane, height, width);
  if constexpr (ColumnAhead > 0) {
    if (column)
      walk<T, Reverse, Vectorized, false, Packed, ColumnAhead, Blocked>(map, grad, result, walker,
                                                                        blocks);
  }
  if constexpr (RowAhead > 0) {
    if (!column)
      walk<T, Reverse, Vectorized, true, Packed, RowAhead, Blocked>(map, grad, result, walker,
                                                                    blocks);
  }
}

// The last kernel of blocked lines: a thread per block whose walker started a run (every
// line's first block does: it starts at the border) follows that run, its tail, through the
// blocks after it, adding each block's head to the run's sum in scan order (as the
// reference adds the blocks' partial sums), up to the block where a new maximum completes
// it, or the line's end; then writes the sum at the run's maximum. Each head belongs to one
// run, so the threads share the work without order; a run is one thread's walk however far
// it goes (a line whose maximum is at its border is a single run), JOIN_AHEAD blocks loaded
// at a time.
template <typename T>
__global__ void __launch_bounds__(THREADS)
    join_kernel(T* __restrict__ grad, Blocks<typename Accumulate<T>::type> blocks,
                int64_t planes, int lines, int height, int width) {
  using Acc = typename Accumulate<T>::type;
  // The arrays' own order, [plane][block in scan order][line]: adjacent threads read
  // adjacent values.
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x;
  if (slot >= planes * blocks.count * lines) return;
  const int at = blocks.tail_at[slot];
  if (at < 0) return;  // no run starts in this block
  const int64_t plane = slot / (static_cast<int64_t>(blocks.count) * lines);
  const int block = static_cast<int>(slot / lines % blocks.count);
  Acc sum = blocks.tails[slot];
  bool complete = false;
  for (int first = block + 1; first < blocks.count && !complete; first += JOIN_AHEAD) {
    Acc heads[JOIN_AHEAD];
    bool ends[JOIN_AHEAD];  // a new maximum in the block completes the run
#pragma unroll
    for (int k = 0; k < JOIN_AHEAD; ++k) {
      const int64_t next = slot + static_cast<int64_t>(first + k - block) * lines;
      const bool inside = first + k < blocks.count;
      heads[k] = inside ? blocks.heads[next] : Acc(0);
      ends[k] = !inside || blocks.tail_at[next] >= 0;
    }
#pragma unroll
    for (int k = 0; k < JOIN_AHEAD; ++k) {
      if (complete || first + k >= blocks.count) break;
      sum = sum + heads[k];
      complete = ends[k];
    }
  }
  plane_start(grad, plane, height, width)[at] = static_cast<T>(sum);
}

const char* launch_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

// The most values a plane may have: offsets inside a plane are 32-bit ints, and a lane's
// first column may lie up to 256 (a chunk of bfloat16) past the last one.
constexpr int64_t MAX_PLANE = INT32_MAX - 256;

// What is wrong with the sizes, or nullptr.
const char* size_problem(int64_t planes, int height, int width) {
  if (planes < 1 || height < 1 || width < 1) return "corner_pool: every size must be at least 1";
  if (planes > INT32_MAX) return "corner_pool: more than 2^31 - 1 planes (B * C)";
  if (static_cast<int64_t>(height) * width > MAX_PLANE)
    return "corner_pool: a plane (H * W) of more than 2^31 - 257 values (32-bit offsets)";
  return nullptr;
}

// Whether every row of the (planes, H, W) maps starts on a 16-byte boundary (nullptr, an
// absent map, does): the kernels then move whole vectors (their `Vectorized` instance).
template <typename T>
bool rows_aligned(int width, std::initializer_list<const void*> maps) {
  return width % VEC<T> == 0 && starts_aligned(maps);
}

// `launch(std::integral_constant<int, W>{})` for the width W of packed rows (`packed`; 0:
// rows as they are), each width a kernel instance of its own: the widths below VEC that
// divide it, from `Narrowest` on (VEC: none, where rows are never packed).
template <typename T, int Narrowest, typename Launch>
const char* for_packed_width(int packed, Launch&& launch) {
  if (packed == 0) return launch(std::integral_constant<int, 0>{});
  if constexpr (PACKS<T> && Narrowest <= 1) {
    if (packed == 1) return launch(std::integral_constant<int, 1>{});
  }
  if constexpr (PACKS<T> && Narrowest <= 2 && VEC<T> > 2) {
    if (packed == 2) return launch(std::integral_constant<int, 2>{});
  }
  if constexpr (PACKS<T> && Narrowest <= 4 && VEC<T> > 4) {
    if (packed == 4) return launch(std::integral_constant<int, 4>{});
  }
  return "corner_pool: no kernel instance for these packed rows";
}

template <typename T, bool Maxima>
const char* launch_pass(const T* a, const T* b, T* out, typename Accumulate<T>::type* row_carry,
                        typename Accumulate<T>::type* column_maxima, const Plan& plan,
                        int64_t planes, int height, int width, bool reverse, bool vectorized,
                        void* stream) {
  const int64_t units = planes * plan.segments * plan.column_segments;
  const int64_t warps = ceil_div(units, WARP / plan.lanes);
  const int64_t blocks = ceil_div(warps, WARPS);
  if (blocks > INT32_MAX) return "corner_pool: too many planes for one launch";
  return for_packed_width<T, 1>(plan.packed, [&](auto packed) {
    constexpr int W = decltype(packed)::value;
    constexpr bool V = W > 0;  // packed rows are loaded as vectors: no instance without
    using Kernel = decltype(&forward_kernel<T, false, V, Maxima, W>);
    const Kernel kernels[2][2] = {  // [reverse][vectorized]
        {forward_kernel<T, false, V, Maxima, W>, forward_kernel<T, false, true, Maxima, W>},
        {forward_kernel<T, true, V, Maxima, W>, forward_kernel<T, true, true, Maxima, W>}};
    LAUNCH_KERNEL(kernels[reverse][vectorized], static_cast<unsigned int>(blocks), THREADS,
                  static_cast<cudaStream_t>(stream))(a, b, out, row_carry, column_maxima, plan,
                                                     planes, height, width);
    return launch_error();
  });
}

template <typename Acc>
const char* launch_prefix(Acc* values, int64_t planes, int segments, int lines, void* stream) {
  const int64_t blocks = ceil_div(planes * lines, WARPS);
  if (blocks > INT32_MAX) return "corner_pool: too many planes for one launch";
  LAUNCH_KERNEL(prefix_kernel<Acc>, static_cast<unsigned int>(blocks), THREADS,
                static_cast<cudaStream_t>(stream))(values, planes, segments, lines);
  return launch_error();
}

// The backward's rows are packed (`packed_width` in corner_pool.h) from width 2 on: a plane
// of one column is walked as a row (`transposes`). Packed rows are never cut into blocks
// (a row is shorter than a vector, a block at least 16 numbers): a walk of blocked rows
// has no packed instance.
template <typename T, bool BlockedRows>
constexpr int NARROWEST_PACKED_WALK = BlockedRows ? VEC<T> : 2;

template <typename T, int ColumnAhead, int RowAhead, bool Blocked = false>
const char* launch_walkers(const T* a, const T* b, const T* grad_out, T* grad_a, T* grad_b,
                           const Blocks<typename Accumulate<T>::type>& column_blocks,
                           const Blocks<typename Accumulate<T>::type>& row_blocks,
                           int64_t planes, int height, int width, bool reverse,
                           bool vectorized, int packed, int64_t column_walkers,
                           int64_t row_walkers, void* stream) {
  const int64_t column_warps = ceil_div(column_walkers, WARP);
  const int64_t warps = column_warps + ceil_div(row_walkers, WARP);
  const int64_t blocks = ceil_div(warps, WARPS);
  if (warps > INT32_MAX)  // so that warp * column_warps fits in 64 bits
    return "corner_pool: too many planes for one launch";
  constexpr int Narrowest = NARROWEST_PACKED_WALK<T, (Blocked && RowAhead > 0)>;
  return for_packed_width<T, Narrowest>(packed, [&](auto packed_rows) {
    constexpr int W = decltype(packed_rows)::value;
    constexpr bool V = W > 0;  // packed rows are loaded as vectors: no instance without
    using Kernel = decltype(&backward_kernel<T, false, V, ColumnAhead, RowAhead, Blocked, W>);
    const Kernel kernels[2][2] = {  // [reverse][vectorized]
        {backward_kernel<T, false, V, ColumnAhead, RowAhead, Blocked, W>,
         backward_kernel<T, false, true, ColumnAhead, RowAhead, Blocked, W>},
        {backward_kernel<T, true, V, ColumnAhead, RowAhead, Blocked, W>,
         backward_kernel<T, true, true, ColumnAhead, RowAhead, Blocked, W>}};
    LAUNCH_KERNEL(kernels[reverse][vectorized], static_cast<unsigned int>(blocks), THREADS,
                  static_cast<cudaStream_t>(stream))(a, b, grad_out, grad_a, grad_b,
                                                     column_blocks, row_blocks, planes, height,
                                                     width, warps, column_warps);
    return launch_error();
  });
}

// One kind of line in launches of its own (`Along`: the rows of b, else the columns of a),
// `walkers` of them: a few long lines, or blocks. Blocked lines take three launches: each
// block's maximum (then the maximum of the blocks before each one), the walkers, and the
// join of the runs that cross blocks. Walkers that are few, or walk blocks (cut long lines,
// few but for many planes), walk deep.
template <typename T, bool Along>
const char* launch_kind(const T* map, const T* grad_out, T* grad,
                        const Blocks<typename Accumulate<T>::type>& blocks, int64_t walkers,
                        int64_t planes, int height, int width, bool reverse, bool vectorized,
                        int packed, void* stream) {
  const bool blocked = blocks.count > 1;
  const int lines = Along ? height : width;  // per plane
  const int64_t grid = ceil_div(walkers, THREADS);  // a thread per walker, in the first two
  if (blocked) {
    if (grid > INT32_MAX) return "corner_pool: too many planes for one launch";
    constexpr int Narrowest = NARROWEST_PACKED_WALK<T, Along>;  // these walk blocks
    const char* error = for_packed_width<T, Narrowest>(packed, [&](auto rows) {
      constexpr int W = decltype(rows)::value;
      constexpr bool V = W > 0;  // as in launch_walkers
      using Kernel = decltype(&block_maxima_kernel<T, false, V, Along, W>);
      const Kernel kernels[2][2] = {  // [reverse][vectorized]
          {block_maxima_kernel<T, false, V, Along, W>,
           block_maxima_kernel<T, false, true, Along, W>},
          {block_maxima_kernel<T, true, V, Along, W>,
           block_maxima_kernel<T, true, true, Along, W>}};
      LAUNCH_KERNEL(kernels[reverse][vectorized], static_cast<unsigned int>(grid), THREADS,
                    static_cast<cudaStream_t>(stream))(map, blocks, planes, height, width);
      return launch_error();
    });
    if (error) return error;
    if (const char* error = launch_prefix(blocks.maxima, planes, blocks.count, lines, stream))
      return error;
  }
  // The steps each kind loads ahead (launch_walkers): this kind's, and 0 for the other.
  constexpr int DEEP = DEEP_AHEAD<T>;
  constexpr int DeepColumns = Along ? 0 : DEEP, DeepRows = Along ? DEEP : 0;
  constexpr int ShallowColumns = Along ? 0 : AHEAD, ShallowRows = Along ? AHEAD : 0;
  const auto launch = blocked ? launch_walkers<T, DeepColumns, DeepRows, true>
                      : walkers < FEW_WALKERS ? launch_walkers<T, DeepColumns, DeepRows>
                                              : launch_walkers<T, ShallowColumns, ShallowRows>;
  // The other kind's maps are absent, and its blocks unused (the same ones are passed).
  if (const char* error =
          launch(Along ? nullptr : map, Along ? map : nullptr, grad_out, Along ? nullptr : grad,
                 Along ? grad : nullptr, blocks, blocks, planes, height, width, reverse,
                 vectorized, packed, Along ? 0 : walkers, Along ? walkers : 0, stream))
    return error;
  if (!blocked) return nullptr;
  const int64_t tails = ceil_div(planes * blocks.count * lines, THREADS);  // join: per line
  if (tails > INT32_MAX) return "corner_pool: too many planes for one launch";
  LAUNCH_KERNEL(join_kernel<T>, static_cast<unsigned int>(tails), THREADS,
                static_cast<cudaStream_t>(stream))(grad, blocks, planes, lines, height, width);
  return launch_error();
}

}  // namespace

template <typename T>
const char* launch_forward(const T* a, const T* b, T* out,
                           typename Accumulate<T>::type* row_carry,
                           typename Accumulate<T>::type* column_maxima, const Plan& plan,
                           int64_t planes, int height, int width, bool reverse, void* stream) {
  if (const char* problem = size_problem(planes, height, width)) return problem;
  if (plan.transposed) std::swap(a, b);  // an H x 1 plane pooled as 1 x H (corner_pool.h)
  const bool vectorized = rows_aligned<T>(plan.width, {a, b, out});
  if (plan.first_pass()) {  // the segments' maxima first, then their prefixes
    if (const char* error = launch_pass<T, true>(
            plan.column_carry ? a : nullptr, plan.row_maxima() ? b : nullptr, nullptr, row_carry,
            column_maxima, plan, planes, plan.height, plan.width, reverse, vectorized, stream))
      return error;
    if (plan.column_carry) {
      if (const char* error =
              launch_prefix(column_maxima, planes, plan.segments, plan.width, stream))
        return error;
    }
    if (plan.row_maxima()) {
      if (const char* error =
              launch_prefix(row_carry, planes, plan.column_segments, plan.height, stream))
        return error;
    }
  }
  return launch_pass<T, false>(a, b, out, row_carry, column_maxima, plan, planes, plan.height,
                               plan.width, reverse, vectorized, stream);
}

template <typename T>
const char* launch_backward(const T* a, const T* b, const T* grad_out, T* grad_a, T* grad_b,
                            int64_t planes, int height, int width, bool reverse, int sum_block,
                            void* scratch, void* stream) {
  using Acc = typename Accumulate<T>::type;
  if (const char* problem = size_problem(planes, height, width)) return problem;
  if (transposes(height, width)) {  // an H x 1 plane walked as 1 x H (corner_pool.h)
    pool_as_row(a, b, height, width);
    std::swap(grad_a, grad_b);
  }
  const bool aligned = starts_aligned({a, b, grad_out, grad_a, grad_b});
  const bool vectorized = aligned && width % VEC<T> == 0;  // as rows_aligned
  const int packed = packed_width<T>(height, width, aligned);  // 0, or rows of 2 or 4
  const int rows_per_vector = packed > 0 ? VEC<T> / packed : 1;
  // The blocks of long lines, their arrays in `scratch` (as backward_scratch_bytes counts).
  char* bytes = static_cast<char*>(scratch);
  const Blocks<Acc> column_blocks =
      Blocks<Acc>::carve(bytes, planes * width, height, a == nullptr ? 0 : sum_block);
  const Blocks<Acc> row_blocks =
      Blocks<Acc>::carve(bytes, planes * height, width, b == nullptr ? 0 : sum_block);
  // Walkers: a column walker per VEC columns (all of packed rows' columns) and block, a row
  // walker per row and block (per vector of packed rows).
  const int64_t column_vectors = packed > 0 ? 1 : ceil_div(width, VEC<T>);
  const int64_t columns = a == nullptr ? 0 : planes * column_blocks.count * column_vectors;
  const int64_t rows = b == nullptr ? 0 : planes * row_blocks.count * (height / rows_per_vector);
  const bool blocked = column_blocks.count > 1 || row_blocks.count > 1;
  if (!blocked && (columns == 0 || columns >= FEW_WALKERS) && (rows == 0 || rows >= FEW_WALKERS))
    return launch_walkers<T, AHEAD, AHEAD>(a, b, grad_out, grad_a, grad_b, column_blocks,
                                           row_blocks, planes, height, width, reverse,
                                           vectorized, packed, columns, rows, stream);
  // Otherwise each kind in launches of its own.
  if (columns > 0) {
    if (const char* error =
            launch_kind<T, false>(a, grad_out, grad_a, column_blocks, columns, planes, height,
                                  width, reverse, vectorized, packed, stream))
      return error;
  }
  if (rows == 0) return nullptr;
  return launch_kind<T, true>(b, grad_out, grad_b, row_blocks, rows, planes, height, width,
                              reverse, vectorized, packed, stream);
}

#define CORNER_POOL_INSTANTIATE(T)                                                          \
  template const char* launch_forward<T>(const T*, const T*, T*, Accumulate<T>::type*,       \
                                         Accumulate<T>::type*, const Plan&, int64_t, int,    \
                                         int, bool, void*);                                  \
  template const char* launch_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int, \
                                          int, bool, int, void*, void*);

// The four dtypes, or only CORNER_POOL_ONLY: the extension compiles this file once per dtype
// (corner_pool_<dtype>.cu), so that its build compiles the four at the same time.
#ifdef CORNER_POOL_ONLY
CORNER_POOL_INSTANTIATE(CORNER_POOL_ONLY)
#else
CORNER_POOL_INSTANTIATE(float)
CORNER_POOL_INSTANTIATE(double)
CORNER_POOL_INSTANTIATE(c10::Half)
CORNER_POOL_INSTANTIATE(c10::BFloat16)
#endif

}  // namespace corner_pool
