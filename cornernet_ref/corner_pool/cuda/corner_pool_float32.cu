// The kernels of corner_pool.cu for float32 alone (see the end of that file).
#define CORNER_POOL_ONLY float
#include "corner_pool.cu"
