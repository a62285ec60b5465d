// The kernels of corner_pool.cu for float16 alone (see the end of that file).
#define CORNER_POOL_ONLY c10::Half
#include "corner_pool.cu"
