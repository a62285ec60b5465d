// Soft-NMS of one class, the official algorithm as one scalar loop (Bodla et al., 2017).
//
// The same function runs on the CPU (soft_nms_cpu.cpp: one class after the other) and on a
// GPU (soft_nms_cuda.cu: one thread per class). The equation is in the docstring of
// cornernet_ref.decode.soft_nms; the comments name its symbols.
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define SOFT_NMS_HOST_DEVICE __host__ __device__
#else
#define SOFT_NMS_HOST_DEVICE
#endif

enum SoftNMSMethod { SOFT_NMS_LINEAR = 1, SOFT_NMS_GAUSSIAN = 2 };  // the official codes

struct SoftNMSOptions {
  int method;
  float sigma;            // sigma of the Gaussian decay
  float iou_threshold;    // N_t of the linear decay
  float score_threshold;  // a touched box whose score falls below it is dropped
};

// Row r of a class: x1 y1 x2 y2 s, the official layout; `index` follows the rows around.
SOFT_NMS_HOST_DEVICE inline void move_row(float* rows, int64_t* index, int64_t to, int64_t from) {
  for (int k = 0; k < 5; ++k) rows[5 * to + k] = rows[5 * from + k];
  index[to] = index[from];
}

SOFT_NMS_HOST_DEVICE inline void swap_rows(float* rows, int64_t* index, int64_t a, int64_t b) {
  for (int k = 0; k < 5; ++k) {
    const float x = rows[5 * a + k];
    rows[5 * a + k] = rows[5 * b + k];
    rows[5 * b + k] = x;
  }
  const int64_t i = index[a];
  index[a] = index[b];
  index[b] = i;
}

// The official loop on the n rows of one class, in place. At step i, M is the first highest
// score among rows i..n-1 (strict <, in the current order), swapped into row i. Every later
// box b that M touches ("+1 pixel" intersection positive in both axes) has its score decayed;
// one that falls below the threshold is swapped with the last row, which is examined next in
// its place, and n shrinks by one. Returns n: rows 0..n-1 are kept, in the order kept.
//
// One change of schedule, not of result: the official code finds the next M in a second
// pass over the rows; here it is tracked during the decay pass, at each row once the row is
// final for this step (rows before `pos` no longer move), which finds the same first maximum.
SOFT_NMS_HOST_DEVICE inline int64_t soft_nms_class(
    float* rows, int64_t* index, int64_t n, SoftNMSOptions options) {
  int64_t best = 0;  // M of step 0: the first highest score
  for (int64_t pos = 1; pos < n; ++pos) {
    if (rows[5 * best + 4] < rows[5 * pos + 4]) best = pos;
  }
  for (int64_t i = 0; i < n; ++i) {
    swap_rows(rows, index, i, best);
    const float m_x1 = rows[5 * i], m_y1 = rows[5 * i + 1];  // M
    const float m_x2 = rows[5 * i + 2], m_y2 = rows[5 * i + 3];
    const float area_m = (m_x2 - m_x1 + 1) * (m_y2 - m_y1 + 1);
    best = -1;  // M of the next step, among the rows examined so far
    float best_score = 0;
    for (int64_t pos = i + 1; pos < n; ++pos) {
      float* b = rows + 5 * pos;
      // min and max as comparisons, as the official Cython compiles them
      const float inter_w = (m_x2 < b[2] ? m_x2 : b[2]) - (m_x1 > b[0] ? m_x1 : b[0]) + 1;
      const float inter_h = (m_y2 < b[3] ? m_y2 : b[3]) - (m_y1 > b[1] ? m_y1 : b[1]) + 1;
      if (inter_w > 0 && inter_h > 0) {  // b touches M: decay s_b
        const float area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1);
        const float inter = inter_w * inter_h;
        const float iou = inter / (area_m + area_b - inter);  // IoU(M, b), "+1" areas
        float weight = 1;
        if (options.method == SOFT_NMS_GAUSSIAN) {
          // e^{-IoU^2 / sigma}, the exponential in double as numpy's in the official code
          weight = (float)exp((double)(-(iou * iou) / options.sigma));
        } else if (iou > options.iou_threshold) {
          weight = 1 - iou;  // 1 - IoU above N_t
        }
        b[4] *= weight;  // s_b <- s_b w(IoU(M, b))
        if (b[4] < options.score_threshold) {  // dropped: the last row comes here ...
          swap_rows(rows, index, pos, n - 1);
          --n;
          --pos;  // ... and is examined next
          continue;
        }
      }
      if (best < 0 || best_score < b[4]) {  // row pos is final for this step
        best = pos;
        best_score = b[4];
      }
    }
  }
  return n;
}

// The soft-NMS of the class whose rows start at row t, if one does. The rows of all boxes are
// sorted by `keys` (the class, -1 for a box to leave out), so that a class is a run of equal
// keys. Marks `kept` for the rows of the run.
SOFT_NMS_HOST_DEVICE inline void soft_nms_class_at(
    int64_t t, int64_t total, const int64_t* keys, float* rows, int64_t* index, bool* kept,
    SoftNMSOptions options) {
  if (t > 0 && keys[t - 1] == keys[t]) return;  // not the first row of its class
  int64_t end = t + 1;
  while (end < total && keys[end] == keys[t]) ++end;
  const int64_t n_kept =
      keys[t] < 0 ? 0 : soft_nms_class(rows + 5 * t, index + t, end - t, options);
  for (int64_t row = t; row < end; ++row) kept[row] = row - t < n_kept;
}
