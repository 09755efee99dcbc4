// seqfeed: widen token ids to int64 on the GPU (what embedding layers take).
//
// Compiled at run time with NVRTC by crates/cuda/src/widen.rs. It uses no
// headers and no vector types, so any NVRTC compiles it. Grid-stride loops:
// any grid covers any n. Consecutive threads touch consecutive elements, so
// loads (2 or 4 bytes) and stores (8 bytes) coalesce; the kernel is bound by
// memory bandwidth. dst must not overlap src.

extern "C" __global__ void widen_u16_to_i64(const unsigned short* __restrict__ src,
                                            long long* __restrict__ dst,
                                            unsigned long long n)
{
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; j < n;
         j += stride) {
        dst[j] = (long long)src[j];
    }
}

extern "C" __global__ void widen_u32_to_i64(const unsigned int* __restrict__ src,
                                            long long* __restrict__ dst,
                                            unsigned long long n)
{
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; j < n;
         j += stride) {
        dst[j] = (long long)src[j];
    }
}
