// CPU emulation of the parts of CUDA that corner_pool.cu uses, so that the very same source
// file compiles with a host C++ compiler and runs on a CPU (tests/kernel_emulation.py builds
// it that way and runs the kernel equivalence tests against it).
//
// The CPU build puts this folder first on the include path, so the kernel's
// `#include <cuda_runtime.h>` finds this file instead of the toolkit's. Nothing else changes:
//
//   __global__, __device__, __host__   nothing: kernels are plain functions.
//   __shared__                          `static`: one copy per kernel instantiation, which is
//                                       right because the blocks of a launch run one at a time.
//   threadIdx, blockIdx, blockDim,      thread_local variables, set before the kernel runs.
//   gridDim
//   a block                             blockDim.x std::threads running the kernel function.
//   __syncthreads()                     a std::barrier shared by the threads of the block.
//   __shfl_*_sync, __syncwarp()         an exchange through per-warp slots between two
//                                       std::barriers of the 32 threads of the warp.
//   kernel<<<blocks, threads, 0, s>>>   LAUNCH_KERNEL(kernel, blocks, threads, s)(args...),
//                                       which runs the blocks one after the other.
//   CORNER_POOL_ACCESS(...)             the kernel's note of a global load or store (nothing
//                                       on a GPU): recorded while a trace is on (below).
//
// Launch errors are those of CUDA: a grid of 0 or more than 2^31 - 1 blocks, or a block of 0
// or more than 1024 threads, is an "invalid configuration argument" reported by
// cudaGetLastError(), and the kernel does not run.
//
// What the emulation cannot show: races *between* blocks (they never overlap here), the
// timing of real hardware (threads interleave as the OS schedules them, so a race shows up
// only under ThreadSanitizer, not as a wrong result), shared memory left uninitialised
// (here it keeps the previous block's values), and anything about speed.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// Functions device code calls unqualified.
using std::isnan;
using std::max;
using std::min;

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};

inline thread_local uint3 threadIdx, blockIdx, blockDim, gridDim;

using cudaStream_t = struct CUstream_st*;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };

inline thread_local cudaError_t cuda_emulation_last_error = cudaSuccess;

inline cudaError_t cudaGetLastError() {
  const cudaError_t error = cuda_emulation_last_error;
  cuda_emulation_last_error = cudaSuccess;
  return error;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "invalid configuration argument";
}

namespace cuda_emulation {

constexpr unsigned int WARP = 32;

// One global load or store of one thread, as the kernel notes it (CORNER_POOL_ACCESS):
// `bytes` 0 for an instruction whose predicate is off in this thread.
struct Access {
  uintptr_t address;
  int bytes;
  bool store;
};

// What the threads of the running block share.
struct Block {
  std::barrier<> sync;  // __syncthreads()
  std::vector<std::unique_ptr<std::barrier<>>> warp_sync;  // one per warp
  std::vector<uint64_t> slots;  // one per thread: the value it offers to a shuffle
  std::vector<std::vector<Access>> accesses;  // one list per thread, while a trace is on

  explicit Block(unsigned int threads) : sync(threads), slots(threads), accesses(threads) {
    for (unsigned int first = 0; first < threads; first += WARP)
      warp_sync.push_back(std::make_unique<std::barrier<>>(std::min(WARP, threads - first)));
  }
};

inline thread_local Block* current_block = nullptr;

// The memory requests of a trace. A warp's instruction is one request: the k-th access each
// lane of the warp notes belongs to its k-th request (the kernel keeps the lanes of a warp
// in step, and notes predicated-off accesses too). Requests are counted by their kind, the
// lanes taking part, the bytes they ask for, and the 32-byte sectors and 128-byte cache
// lines those bytes lie in: what decides the work of the L1 cache and the bytes it fetches.
using RequestKind = std::tuple<bool, int, int, int, int>;  // store, lanes, bytes, sectors, lines
inline bool tracing = false;                  // changed between launches only
inline std::map<RequestKind, int64_t> requests;  // kind -> count

// Called by the block's first thread once all its threads have run the kernel.
inline void count_requests(Block& block) {
  for (size_t first = 0; first < block.accesses.size(); first += WARP) {
    const size_t last = std::min(first + WARP, block.accesses.size());
    size_t longest = 0;
    for (size_t t = first; t < last; ++t) longest = std::max(longest, block.accesses[t].size());
    for (size_t k = 0; k < longest; ++k) {
      std::set<uintptr_t> sectors, lines;
      int lanes = 0, bytes = 0;
      bool store = false;
      for (size_t t = first; t < last; ++t) {
        if (k >= block.accesses[t].size() || block.accesses[t][k].bytes == 0) continue;
        const Access& access = block.accesses[t][k];
        for (uintptr_t byte = access.address; byte < access.address + access.bytes; ++byte) {
          sectors.insert(byte / 32);
          lines.insert(byte / 128);
        }
        lanes += 1;
        bytes += access.bytes;
        store = access.store;
      }
      if (lanes > 0)
        requests[{store, lanes, bytes, static_cast<int>(sectors.size()),
                  static_cast<int>(lines.size())}] += 1;
    }
  }
}

// A thread's note of a global access of `bytes` bytes at element `offset` of `base`;
// `active`: the thread's predicate (off: nothing is read or written, and `base` may be null).
template <typename T>
void note_access(const T* base, int64_t offset, int bytes, bool active, bool store) {
  if (!tracing) return;
  const uintptr_t address = active ? reinterpret_cast<uintptr_t>(base + offset) : 0;
  current_block->accesses[threadIdx.x].push_back({address, active ? bytes : 0, store});
}

inline std::barrier<>& warp_barrier() { return *current_block->warp_sync[threadIdx.x / WARP]; }

// Every thread of the warp offers `value`; each gets the value offered by lane `source`
// (its own when `source` lies outside the warp, as CUDA's shuffles do at the edges).
template <typename T>
T exchange(T value, int source) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  const unsigned int first = threadIdx.x / WARP * WARP;
  const unsigned int width = std::min(WARP, blockDim.x - first);
  uint64_t offered = 0;
  std::memcpy(&offered, &value, sizeof(T));
  current_block->slots[threadIdx.x] = offered;
  warp_barrier().arrive_and_wait();  // every lane has offered
  T result = value;
  if (source >= 0 && static_cast<unsigned int>(source) < width)
    std::memcpy(&result, &current_block->slots[first + source], sizeof(T));
  warp_barrier().arrive_and_wait();  // every lane has read: the slots may be reused
  return result;
}

inline unsigned int lane() { return threadIdx.x % WARP; }

// Runs `kernel(args...)` on a grid of `blocks` blocks of `threads` threads: the threads of a
// block run at the same time, the blocks one after the other (the same threads, with a
// barrier between blocks). Launches from different host threads are serialised, since
// __shared__ variables are static.
template <typename Kernel>
auto launch(Kernel kernel, unsigned int blocks, unsigned int threads, cudaStream_t /*stream*/) {
  return [=](auto... args) {
    if (blocks == 0 || blocks > 0x7fffffffu || threads == 0 || threads > 1024) {
      cuda_emulation_last_error = cudaErrorInvalidConfiguration;
      return;
    }
    static std::mutex one_launch_at_a_time;
    const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    Block block(threads);
    std::vector<std::thread> workers;
    for (unsigned int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        current_block = &block;
        threadIdx = {t, 0, 0};
        blockDim = {threads, 1, 1};
        gridDim = {blocks, 1, 1};
        for (unsigned int b = 0; b < blocks; ++b) {
          blockIdx = {b, 0, 0};
          kernel(args...);
          block.sync.arrive_and_wait();  // the block is over before the next one starts
          if (tracing) {
            if (t == 0) count_requests(block);
            block.sync.arrive_and_wait();  // counted: each thread clears its own list
            block.accesses[t].clear();
          }
        }
      });
    }
    for (std::thread& worker : workers) worker.join();
  };
}

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::current_block->sync.arrive_and_wait(); }

inline void __syncwarp(unsigned int = 0xffffffffu) {
  cuda_emulation::warp_barrier().arrive_and_wait();
}

// A shuffle of `width` lanes (a power of two, at most 32) cuts the warp into segments of that
// many lanes, each shuffling on its own: a lane whose source would lie outside its segment
// (past its start for __shfl_up_sync, past its end for __shfl_down_sync and, beyond
// the lanes after its segment, for __shfl_xor_sync) gets its own value back, and
// __shfl_sync's source is taken modulo the width, inside the segment.
template <typename T>
T __shfl_sync(unsigned int, T value, int source, int width = 32) {
  const int start = static_cast<int>(cuda_emulation::lane()) / width * width;
  return cuda_emulation::exchange(value, start + (source & (width - 1)));  // width: 2^k
}

template <typename T>
T __shfl_up_sync(unsigned int, T value, unsigned int delta, int width = 32) {
  const int lane = static_cast<int>(cuda_emulation::lane());
  const bool inside = lane % width >= static_cast<int>(delta);
  return cuda_emulation::exchange(value, inside ? lane - static_cast<int>(delta) : lane);
}

template <typename T>
T __shfl_down_sync(unsigned int, T value, unsigned int delta, int width = 32) {
  const int lane = static_cast<int>(cuda_emulation::lane());
  const bool inside = lane % width + static_cast<int>(delta) < width;
  return cuda_emulation::exchange(value, inside ? lane + static_cast<int>(delta) : lane);
}

template <typename T>
T __shfl_xor_sync(unsigned int, T value, int mask, int width = 32) {
  const int lane = static_cast<int>(cuda_emulation::lane()), source = lane ^ mask;
  const bool inside = source < (lane / width + 1) * width;
  return cuda_emulation::exchange(value, inside ? source : lane);
}

#define CORNER_POOL_ACCESS(base, offset, bytes, active, store) \
  ::cuda_emulation::note_access(base, offset, bytes, active, store)

// kernel<<<blocks, threads, 0, stream>>>(args...) becomes
// LAUNCH_KERNEL(kernel, blocks, threads, stream)(args...); the stream is ignored.
#define LAUNCH_KERNEL(kernel, blocks, threads, stream) \
  ::cuda_emulation::launch(kernel, blocks, threads, stream)
