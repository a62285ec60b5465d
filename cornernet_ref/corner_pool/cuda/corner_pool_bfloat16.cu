// The kernels of corner_pool.cu for bfloat16 alone (see the end of that file).
#define CORNER_POOL_ONLY c10::BFloat16
#include "corner_pool.cu"
