// The kernels of corner_pool.cu for float64 alone (see the end of that file).
#define CORNER_POOL_ONLY double
#include "corner_pool.cu"
