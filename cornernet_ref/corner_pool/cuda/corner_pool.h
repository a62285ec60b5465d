// Interface between the kernels (corner_pool.cu, compiled by nvcc) and the PyTorch binding
// (binding.cpp, compiled by the host compiler). It needs no CUDA header: the stream travels
// as an opaque pointer, and errors come back as a message (nullptr when all went well).
#pragma once

#include <cstdint>
#include <initializer_list>

namespace corner_pool {

// Comparisons, sums and carries use `Accumulate<T>::type`: float for float, float16 and
// bfloat16 (which hold every 16-bit value exactly), double for double.
template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

constexpr int WARP = 32;
// Every lane loads 16 bytes at a time: VEC<T> consecutive numbers (4 float32, 8 float16 or
// bfloat16, 2 float64), so that a warp reads 512 contiguous bytes in one instruction.
constexpr int VECTOR_BYTES = 16;
template <typename T>
constexpr int VEC = VECTOR_BYTES / static_cast<int>(sizeof(T));

// Whether every map given starts on a 16-byte boundary (nullptr, an absent map, does).
inline bool starts_aligned(std::initializer_list<const void*> maps) {
  for (const void* map : maps)
    if (reinterpret_cast<uintptr_t>(map) % VECTOR_BYTES != 0) return false;
  return true;
}

// Whether rows of T may be packed (below): not float64's, since each width is a kernel
// instance of its own, and float64's speed is no goal.
template <typename T>
constexpr bool PACKS = sizeof(T) <= 4;

// Rows narrower than a vector, *packed*: when VEC is a multiple of the width W, the maps
// start on 16-byte boundaries and the height is a multiple of P = VEC / W, every vector of a
// plane holds P whole rows (each plane's first vector included), and the kernels load and
// store 16 bytes, P rows, at a time instead of one number at a time. Returns W, or 0 when the
// rows are not packed; float64 rows never are (`PACKS`).
template <typename T>
int packed_width(int height, int width, bool aligned) {
  const bool packs = PACKS<T> && aligned && width < VEC<T> && VEC<T> % width == 0 &&
                     height % (VEC<T> / width) == 0;
  return packs ? width : 0;
}

// A plane of one column (W = 1) is also a plane of one row: its H values lie one after the
// other, the vertical scan runs along them, and the horizontal scan of a single column is
// the identity. So the kernels may pool an H x 1 plane as a 1 x H plane with the two maps
// swapped (V(a) + H(b) = H'(a) + V'(b) on the 1 x H plane, a sum that IEEE arithmetic
// computes bit for bit the same in either order): a group of lanes then walks it with
// 16-byte loads instead of one number per lane. The backward always does (its walkers are
// serial along a line either way, and a row walker loads 16 bytes at a time). The forward
// does when the row is one chunk, or when the planes alone fill the GPU: a long row is
// walked chunk after chunk by one group, while a long column is cut into segments.
inline bool transposes(int height, int width) { return width == 1 && height > 1; }

// The H x 1 plane as the 1 x H plane it is pooled as: the maps `a` and `b` (or whatever
// stands for them) swap their roles, and the sizes become 1 and H.
template <typename Map>
void pool_as_row(Map& a, Map& b, int& height, int& width) {
  const Map vertical = b;
  b = a;
  a = vertical;
  width = height;
  height = 1;
}

// How the forward shares a map out among warps (see corner_pool.cu). A plane's row is cut
// into chunks of `lanes` * VEC columns, `lanes` a power of two up to 32: a group of `lanes`
// lanes scans it, and a warp holds 32 / lanes groups, each on a plane of its own. Its rows
// are cut into `segments` runs of `segment_rows` consecutive rows in scan order, and its
// chunks into `column_segments` runs of `segment_chunks` chunks; each (plane, segment,
// column segment) is one group's work. A segment starts from the column maxima of `a` over
// the segments before it, a column segment from the row maxima of `b` over the column
// segments before it (both computed by a first pass, into `column_maxima` and `row_carry`).
//
// Packed rows (see `packed_width`) are pooled as a plane of H / P rows of VEC columns, one
// vector each, scanned by one lane: `height` and `width` are those of that plane, and
// `packed` the width W of the rows inside each vector.
struct Plan {
  bool transposed;   // an H x 1 plane pooled as 1 x H, the maps swapped (see `transposes`)
  int packed;        // rows of `packed` numbers, P of them per vector; 0: rows as they are
  int height;        // of the planes as pooled: H and W, 1 and H when transposed, or
  int width;         // H / P and VEC when packed
  int lanes;         // lanes per group: the fewest that cover a row, at most 32
  int chunks;        // chunks per row, scanned one after the other by the group
  int segments;         // per plane
  int segment_rows;     // rows per segment (the last may have fewer)
  int column_segments;  // per plane: runs of chunks (1 but on wide rows of few planes)
  int segment_chunks;   // chunks per column segment (the last may have fewer)
  bool row_carry;       // wide rows: each row's maximum waits between chunks
  bool column_carry;    // several segments and a map to pool vertically: the segments' maxima
  // The carries' sizes in values: each row's maximum between chunks, per column segment
  // (planes * column_segments * height), and the column maxima of each segment (planes *
  // segments * width).
  int64_t row_carry_values(int64_t planes) const {
    return row_carry ? planes * column_segments * height : 0;
  }
  // The column segments' row maxima of b are carried (wide rows cut into column segments).
  bool row_maxima() const { return row_carry && column_segments > 1; }
  // A first pass is needed: for the segments' column maxima, or the column segments' row
  // maxima.
  bool first_pass() const { return column_carry || row_maxima(); }
  int64_t column_maxima_values(int64_t planes) const {
    return column_carry ? planes * segments * width : 0;
  }
};

// Splitting the rows costs one more read of `a` (the first pass), so it is done only when
// the planes alone give fewer than MIN_WARPS warps: about 8 per SM of an H100 or H200, which
// with 4 rows of 16-byte loads in flight per lane keep about 4 MB on their way from memory,
// the bandwidth-latency product of the chip (4 TB/s x 1 us). The segments are then as many
// as give MIN_WARPS warps, each of at least MIN_SEGMENT_ROWS rows; a segment starts from one
// value per column, the maxima of the segments before it, whatever their number.
constexpr int64_t MIN_WARPS = 1024;
constexpr int MIN_SEGMENT_ROWS = 64;
// Rows are cut first; if the warps are still too few, wide rows are cut into column
// segments of at least MIN_SEGMENT_CHUNKS chunks (the first pass then reads `b` too).
constexpr int MIN_SEGMENT_CHUNKS = 8;

constexpr int64_t ceil_div(int64_t n, int64_t d) { return (n + d - 1) / d; }

// `has_a`, `has_b`: which maps are given; `aligned`: every map starts on a 16-byte boundary
// (`starts_aligned`). `segments` = 0 chooses the split as above; a positive value forces it
// (tests).
template <typename T>
Plan plan_forward(bool has_a, bool has_b, int64_t planes, int height, int width, bool aligned,
                  int segments = 0) {
  const bool transposed = transposes(height, width) &&
                          (height <= WARP * VEC<T> || planes >= MIN_WARPS);
  if (transposed) pool_as_row(has_a, has_b, height, width);
  const int packed = packed_width<T>(height, width, aligned);
  if (packed > 0) {  // the plane of vectors it is pooled as
    height /= VEC<T> / packed;
    width = VEC<T>;
  }
  Plan plan{transposed, packed, height, width, 1, 1, 1, height, 1, 1, false, false};
  while (plan.lanes < WARP && plan.lanes * VEC<T> < width) plan.lanes *= 2;
  plan.chunks = static_cast<int>(ceil_div(width, plan.lanes * VEC<T>));
  plan.row_carry = has_b && plan.chunks > 1;
  if (segments <= 0) {
    const int64_t groups_per_warp = WARP / plan.lanes;
    const int64_t warps = ceil_div(planes, groups_per_warp);
    segments = 1;
    if (warps < MIN_WARPS) {
      int64_t wanted = ceil_div(MIN_WARPS * groups_per_warp, planes);
      wanted = wanted < height / MIN_SEGMENT_ROWS ? wanted : height / MIN_SEGMENT_ROWS;
      segments = wanted > 1 ? static_cast<int>(wanted) : 1;
    }
  }
  plan.segment_rows = static_cast<int>(ceil_div(height, segments < height ? segments : height));
  plan.segments = static_cast<int>(ceil_div(height, plan.segment_rows));  // none empty
  plan.column_carry = has_a && plan.segments > 1;
  // Wide rows (one group per warp): as many column segments as make MIN_WARPS warps.
  const int64_t units = planes * plan.segments;
  plan.segment_chunks = plan.chunks;
  if (plan.chunks > 1 && units < MIN_WARPS) {
    int64_t wanted = ceil_div(MIN_WARPS, units);
    const int64_t most = plan.chunks / MIN_SEGMENT_CHUNKS;
    wanted = wanted < most ? wanted : most;
    if (wanted > 1) plan.segment_chunks = static_cast<int>(ceil_div(plan.chunks, wanted));
  }
  plan.column_segments = static_cast<int>(ceil_div(plan.chunks, plan.segment_chunks));
  return plan;
}

// Forward of one pool over `planes` contiguous H x W planes: out = V(a) + H(b), where V pools
// the rows (top if reverse, else bottom) and H the columns (left if reverse, else right).
// a or b may be nullptr: then out is the pool of the other one alone. `plan` comes from
// plan_forward for the same maps and sizes; `row_carry` holds plan.row_carry_values(planes)
// values and `column_maxima` plan.column_maxima_values(planes) (each nullptr when that
// is 0). H * W may be at most 2^31 - 257.
template <typename T>
const char* launch_forward(const T* a, const T* b, T* out,
                           typename Accumulate<T>::type* row_carry,
                           typename Accumulate<T>::type* column_maxima, const Plan& plan,
                           int64_t planes, int height, int width, bool reverse, void* stream);

// The backward's blocks (corner_pool.cu, "Blocks of long lines"): a line of more than
// `sum_block` positions (sum_block > 0, a multiple of 16) is cut at every multiple of
// sum_block into blocks walked in parallel; any other line is one block.
inline int sum_blocks(int length, int sum_block) {
  return sum_block > 0 && length > sum_block ? static_cast<int>(ceil_div(length, sum_block)) : 1;
}

// What the blocks of one kind of line carry between the backward's kernels: per line and
// block, three values in Acc (the block's maximum, the sum that continues the run coming in,
// the sum of its last run) and an offset (where that run's maximum is), 16-byte aligned.
template <typename T>
int64_t blocked_bytes(int64_t lines, int blocks) {
  using Acc = typename Accumulate<T>::type;
  if (blocks <= 1) return 0;
  return ceil_div(lines * blocks * static_cast<int64_t>(3 * sizeof(Acc) + sizeof(int)), 16) * 16;
}

// The bytes of `scratch` that launch_backward needs: the column blocks' (of a), then the row
// blocks' (of b), for the planes as walked (an H x 1 plane as 1 x H, see `transposes`).
template <typename T>
int64_t backward_scratch_bytes(bool has_a, bool has_b, int64_t planes, int height, int width,
                               int sum_block) {
  if (transposes(height, width)) pool_as_row(has_a, has_b, height, width);
  return (has_a ? blocked_bytes<T>(planes * width, sum_blocks(height, sum_block)) : 0) +
         (has_b ? blocked_bytes<T>(planes * height, sum_blocks(width, sum_block)) : 0);
}

// Backward: grad_a and grad_b (each may be nullptr together with its input) from grad_out,
// each line's sums taken in blocks of `sum_block` (0: whole lines); `scratch` holds
// backward_scratch_bytes(...) bytes (nullptr when that is 0).
template <typename T>
const char* launch_backward(const T* a, const T* b, const T* grad_out, T* grad_a, T* grad_b,
                            int64_t planes, int height, int width, bool reverse, int sum_block,
                            void* scratch, void* stream);

}  // namespace corner_pool
