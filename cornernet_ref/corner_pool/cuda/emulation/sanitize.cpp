// A program that runs the CPU build of the kernels (harness.cpp) on the shapes given on the
// command line, for the sanitizer builds (tests/test_kernel_sanitizers.py): under
// ThreadSanitizer a missing __syncthreads() shows up as a data race between the threads of a
// block, under UndefinedBehaviorSanitizer an overflow or an out-of-range shift as a report.
//
//   sanitize PLANESxHEIGHTxWIDTH ...
//
// For each shape: float32 and bfloat16, both corners, both maps and each map alone, and both
// maps starting one element off a vector boundary; forward (each plane's rows cut into 3
// segments, and as the kernel chooses) and backward (lines cut into blocks of 16), on
// integer maps full of ties. Every output starts as NaN and the inputs hold none, so an
// output left unwritten is caught too.
// Exit status 0 when all went well.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include <c10/util/BFloat16.h>

extern "C" {
const char* corner_pool_forward(int dtype, const void* a, const void* b, void* out,
                                int64_t planes, int height, int width, bool reverse,
                                int segments);
const char* corner_pool_backward(int dtype, const void* a, const void* b, const void* grad_out,
                                 void* grad_a, void* grad_b, int64_t planes, int height,
                                 int width, bool reverse, int sum_block);
}

namespace {

// Blocks of 16 positions: every line longer than that is walked in blocks and joined.
constexpr int SUM_BLOCK = 16;

template <typename T>
bool all_written(const std::vector<T>& values) {
  for (const T& value : values)
    if (std::isnan(static_cast<float>(value))) return false;
  return true;
}

template <typename T>
bool run(int dtype, int64_t planes, int height, int width, std::mt19937& random) {
  const size_t count = planes * height * width;
  std::uniform_int_distribution<int> tie(0, 3), gradient(-4, 4);
  // One value more than needed: the inputs start at element 0 (aligned) or 1 (not).
  std::vector<T> a(count + 1), b(count + 1), grad(count + 1);
  for (size_t i = 0; i <= count; ++i) {
    a[i] = static_cast<T>(tie(random));
    b[i] = static_cast<T>(tie(random));
    grad[i] = static_cast<T>(gradient(random));
  }
  bool ok = true;
  for (const bool reverse : {true, false}) {
    for (const int maps : {0, 1, 2, 3}) {  // both, a alone, b alone, both off alignment
      const size_t shift = maps == 3 ? 1 : 0;
      const T* a_in = maps == 2 ? nullptr : a.data() + shift;
      const T* b_in = maps == 1 ? nullptr : b.data() + shift;
      const T nan = static_cast<T>(NAN);
      std::vector<T> out(count, nan), grad_a(a_in ? count : 0, nan), grad_b(b_in ? count : 0, nan);
      // The forward with each plane cut into 3 segments (checked for unwritten outputs
      // here), then with its own choice (checked below).
      const char* error = corner_pool_forward(dtype, a_in, b_in, out.data(), planes, height,
                                              width, reverse, 3);
      ok = all_written(out) && ok;
      std::fill(out.begin(), out.end(), nan);
      if (error == nullptr)
        error = corner_pool_forward(dtype, a_in, b_in, out.data(), planes, height, width,
                                    reverse, 0);
      if (error == nullptr)
        error = corner_pool_backward(dtype, a_in, b_in, grad.data() + shift,
                                     a_in ? grad_a.data() : nullptr,
                                     b_in ? grad_b.data() : nullptr, planes, height, width,
                                     reverse, SUM_BLOCK);
      if (error != nullptr) {
        std::fprintf(stderr, "launch failed: %s\n", error);
        ok = false;
      } else if (!all_written(out) || !all_written(grad_a) || !all_written(grad_b)) {
        std::fprintf(stderr, "outputs left unwritten: %lldx%dx%d dtype %d reverse %d maps %d\n",
                     static_cast<long long>(planes), height, width, dtype, reverse, maps);
        ok = false;
      }
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::mt19937 random(0);
  bool ok = argc > 1;
  for (int i = 1; i < argc; ++i) {
    long long planes = 0;
    int height = 0, width = 0;
    if (std::sscanf(argv[i], "%lldx%dx%d", &planes, &height, &width) != 3) {
      std::fprintf(stderr, "not a shape PLANESxHEIGHTxWIDTH: %s\n", argv[i]);
      return 2;
    }
    ok = run<float>(0, planes, height, width, random) && ok;
    ok = run<c10::BFloat16>(3, planes, height, width, random) && ok;
  }
  return ok ? 0 : 1;
}
