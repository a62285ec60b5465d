// The CPU build of soft_nms.h: the classes one after the other, on one core.
#include <algorithm>
#include <numeric>
#include <vector>

#include "soft_nms.h"

// Soft-NMS of `total` boxes ((N, 4) `boxes`, (N,) `scores`) by class (`keys`). Writes, for
// each row: `index`, the box (grouped by key ascending, kept boxes first in the order kept);
// `new_scores`, its decayed score; `kept`.
extern "C" void soft_nms_cpu(
    int64_t total, const float* boxes, const float* scores, const int64_t* keys,
    int64_t* index, float* new_scores, bool* kept, int method, float sigma,
    float iou_threshold, float score_threshold) {
  std::iota(index, index + total, int64_t{0});
  std::stable_sort(index, index + total, [keys](int64_t a, int64_t b) { return keys[a] < keys[b]; });
  std::vector<int64_t> sorted_keys(total);
  std::vector<float> rows(5 * total);
  for (int64_t row = 0; row < total; ++row) {
    const int64_t box = index[row];
    sorted_keys[row] = keys[box];
    std::copy(boxes + 4 * box, boxes + 4 * box + 4, rows.data() + 5 * row);
    rows[5 * row + 4] = scores[box];
  }
  const SoftNMSOptions options{method, sigma, iou_threshold, score_threshold};
  for (int64_t t = 0; t < total; ++t) {
    soft_nms_class_at(t, total, sorted_keys.data(), rows.data(), index, kept, options);
  }
  for (int64_t row = 0; row < total; ++row) new_scores[row] = rows[5 * row + 4];
}
