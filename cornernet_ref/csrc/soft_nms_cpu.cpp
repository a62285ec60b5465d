// The CPU build of soft_nms.h: the classes one after the other, on one core.
#include <algorithm>
#include <memory>
#include <numeric>
#include <vector>

#include "soft_nms.h"

// `index`: the boxes 0..total-1 sorted by key, in input order within a key (a stable sort).
// Class keys are small numbers: one count per key, then each box to its key's next place.
static void sort_by_key(int64_t total, const int64_t* keys, int64_t* index) {
  if (total == 0) return;
  const auto [low, high] = std::minmax_element(keys, keys + total);
  const uint64_t spread = (uint64_t)*high - (uint64_t)*low;  // unsigned: cannot overflow
  if (spread > (uint64_t)(4 * total + 1024)) {  // keys too spread out to count
    std::iota(index, index + total, int64_t{0});
    std::stable_sort(index, index + total, [keys](int64_t a, int64_t b) { return keys[a] < keys[b]; });
    return;
  }
  std::vector<int64_t> next(spread + 2, 0);  // next[k + 1]: how many boxes have key low + k
  for (int64_t box = 0; box < total; ++box) ++next[keys[box] - *low + 1];
  std::partial_sum(next.begin(), next.end(), next.begin());  // next[k]: where key k starts
  for (int64_t box = 0; box < total; ++box) index[next[keys[box] - *low]++] = box;
}

// The loop of every class on rows sorted by key, as the CUDA kernel runs it (one class per
// thread there): `keys` (N,) sorted; `rows` (N, 5) x1 y1 x2 y2 s, decayed in place; `index`
// (N,) the box of each row, permuted with the rows; `kept` (N,) written.
extern "C" void soft_nms_rows(
    int64_t total, const int64_t* keys, float* rows, int64_t* index, bool* kept, int method,
    float sigma, float iou_threshold, float score_threshold) {
  const SoftNMSOptions options{method, sigma, iou_threshold, score_threshold};
  for (int64_t t = 0; t < total; ++t) {
    soft_nms_class_at(t, total, keys, rows, index, kept, options);
  }
}

// Soft-NMS of `total` boxes ((N, 4) `boxes`, (N,) `scores`) by class (`keys`). Writes `order`,
// every box once: the kept boxes first, grouped by key ascending and in the order kept, then
// the others; `new_scores`, the decayed score of each; `kept`.
extern "C" void soft_nms_cpu(
    int64_t total, const float* boxes, const float* scores, const int64_t* keys,
    int64_t* order, float* new_scores, bool* kept, int method, float sigma,
    float iou_threshold, float score_threshold) {
  std::vector<int64_t> index(total);  // the box of each row
  sort_by_key(total, keys, index.data());
  std::vector<int64_t> sorted_keys(total);
  std::vector<float> rows(5 * total);
  for (int64_t row = 0; row < total; ++row) {
    const int64_t box = index[row];
    sorted_keys[row] = keys[box];
    std::copy(boxes + 4 * box, boxes + 4 * box + 4, rows.data() + 5 * row);
    rows[5 * row + 4] = scores[box];
  }
  std::unique_ptr<bool[]> is_kept(new bool[total]);  // by row
  soft_nms_rows(
      total, sorted_keys.data(), rows.data(), index.data(), is_kept.get(), method, sigma,
      iou_threshold, score_threshold);
  int64_t out = 0;
  for (const bool keep : {true, false}) {  // the kept rows first, then the others
    for (int64_t row = 0; row < total; ++row) {
      if (is_kept[row] != keep) continue;
      order[out] = index[row];
      new_scores[out] = rows[5 * row + 4];
      kept[out++] = keep;
    }
  }
}
