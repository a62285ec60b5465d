// The CUDA build of soft_nms.h: one thread per class, all classes at once. A thread whose row
// does not start a class returns at once. Launched on the caller's stream: the host waits
// for nothing.
#include <cuda_runtime.h>

#include "soft_nms.h"

__global__ void soft_nms_kernel(
    int64_t total, const int64_t* keys, float* rows, int64_t* index, bool* kept,
    SoftNMSOptions options) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t < total) soft_nms_class_at(t, total, keys, rows, index, kept, options);
}

// `keys` (N,): the sorted keys; `rows` (N, 5): x1 y1 x2 y2 s of the box of each row, decayed
// in place; `index` (N,): the box of each row, permuted with the rows; `kept` (N,) written.
// `device` and `stream`: where the tensors are and the caller's stream on it.
extern "C" int soft_nms_cuda(
    int64_t total, const int64_t* keys, float* rows, int64_t* index, bool* kept, int method,
    float sigma, float iou_threshold, float score_threshold, int device, void* stream) {
  const SoftNMSOptions options{method, sigma, iou_threshold, score_threshold};
  const int threads = 128;
  const int64_t blocks = (total + threads - 1) / threads;
  int caller_device = 0;
  cudaGetDevice(&caller_device);
  cudaSetDevice(device);  // the stream's device, restored after the launch
  if (blocks > 0) {
    soft_nms_kernel<<<(unsigned)blocks, threads, 0, (cudaStream_t)stream>>>(
        total, keys, rows, index, kept, options);
  }
  const cudaError_t error = cudaGetLastError();  // a launch error; nothing waits for the kernel
  cudaSetDevice(caller_device);
  return (int)error;
}
