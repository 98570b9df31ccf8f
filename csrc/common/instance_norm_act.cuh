// Fused instance norm + affine + LeakyReLU: device code, free of ATen types (reusable from a TensorRT
// plugin or a plain CUDA program).
//
// Memory floor: forward reads x twice (statistics, normalize) and writes y once; backward reads x and dy
// twice (reduction, dx) and writes dx once. Every kernel below streams its tensor once with 16-byte
// accesses; the statistics/reduction kernels write one small partial per block, merged by a one-warp-per-
// plane kernel, so no kernel depends on a zeroed buffer or on atomics.
//
// Layouts: NCHW planes are spread over blocks (grid = planes x chunks). Channels-last ([N, HW, C]) uses a
// 2-D block: threadIdx.x walks channel vectors (coalesced along C), threadIdx.y walks pixels; partials are
// per (image, pixel chunk, channel).
//
// Statistics: each thread holds one round of loads in registers and sums them twice (mean, then squared
// deviations from it): an exact two-pass variance per round, so a large mean offset costs no precision.
// Rounds, threads and blocks are merged with Chan's formula; chunks with an exact two-pass in double.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace p2phd {
namespace norm {

constexpr int kThreads = 256;  // threads per block of every streaming kernel
constexpr int kWarps = kThreads / 32;

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename T>
__device__ __forceinline__ T from_acc(double v) {
  return v;
}

// V consecutive elements; 16 bytes for the vector path, one element for the scalar fallback.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

// Outputs are not read again by this op: stream them past L2 (keeps x resident for the next pass).
template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  if constexpr (sizeof(Pack<T, V>) == 16) {
    __stcs(reinterpret_cast<uint4*>(p), *reinterpret_cast<const uint4*>(&v));
  } else {
    *reinterpret_cast<Pack<T, V>*>(p) = v;
  }
}

template <typename A>
__device__ __forceinline__ A leaky(A z, A slope) {
  return z > A(0) ? z : z * slope;
}

// (count, mean, M2) of a set of values.
template <typename A>
struct Moments {
  A n, mean, m2;
};

template <typename A>
__device__ __forceinline__ void chan_merge(A& n, A& mean, A& m2, A nb, A mb, A m2b) {
  if (nb == A(0)) return;
  const A tot = n + nb, delta = mb - mean, f = nb / tot;
  mean += delta * f;
  m2 += m2b + delta * delta * n * f;
  n = tot;
}

template <typename A>
struct Pair {
  A a, b;
};

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide Chan reduction for a block of exactly kThreads threads; the result is valid in thread 0.
template <typename A>
__device__ __forceinline__ void block_moments(A& n, A& mean, A& m2) {
  __shared__ A sh[3][kWarps];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A nb = __shfl_down_sync(0xffffffffu, n, o);
    const A mb = __shfl_down_sync(0xffffffffu, mean, o);
    const A qb = __shfl_down_sync(0xffffffffu, m2, o);
    chan_merge(n, mean, m2, nb, mb, qb);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sh[0][warp] = n;
    sh[1][warp] = mean;
    sh[2][warp] = m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) chan_merge(n, mean, m2, sh[0][w], sh[1][w], sh[2][w]);
  }
}

// Block-wide sum of two values (block of exactly kThreads threads); valid in thread 0.
template <typename A>
__device__ __forceinline__ void block_sum2(A& a, A& b) {
  __shared__ A sh[2][kWarps];
  a = warp_sum(a);
  b = warp_sum(b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) {
      a += sh[0][w];
      b += sh[1][w];
    }
  }
}

// Per-plane affine parameters; w/b may be null (1 and 0).
template <typename A>
struct Affine {
  const A* mean;  // [N*C]
  const A* rstd;  // [N*C]
  const A* w;     // [C] or null
  const A* b;     // [C] or null
  __device__ __forceinline__ A weight(int64_t c) const { return w ? w[c] : A(1); }
  __device__ __forceinline__ A bias(int64_t c) const { return b ? b[c] : A(0); }
};

// ------------------------------------------------------------------------------------------------
// Forward, NCHW. Block `blockIdx.x` = plane * K + chunk; chunk covers [k*chunk, (k+1)*chunk) of the
// plane (`chunk` a multiple of V; hw a multiple of V on the vector path).

template <typename T, int V, int ITEMS>
__global__ void __launch_bounds__(kThreads)
    nchw_stats_kernel(const T* __restrict__ x, int64_t hw, int64_t chunk, int64_t K,
                      Moments<typename AccOf<T>::type>* __restrict__ part) {
  using A = typename AccOf<T>::type;
  const int64_t plane = blockIdx.x / K, k = blockIdx.x % K;
  const T* p = x + plane * hw;
  const int64_t lo = k * chunk, hi = min(lo + chunk, hw);
  constexpr int64_t kStep = int64_t(kThreads) * V;
  A n = 0, mean = 0, m2 = 0;
  for (int64_t base = lo + int64_t(threadIdx.x) * V; base < hi; base += kStep * ITEMS) {
    Pack<T, V> pk[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      if (base + i * kStep < hi) pk[i] = load_pack<T, V>(p + base + i * kStep);
    A s = 0;
    int cnt = 0;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      if (base + i * kStep < hi) {
        cnt += V;
#pragma unroll
        for (int j = 0; j < V; ++j) s += to_acc(pk[i].v[j]);
      }
    const A mb = s / A(cnt);
    A q = 0;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      if (base + i * kStep < hi) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const A d = to_acc(pk[i].v[j]) - mb;
          q += d * d;
        }
      }
    chan_merge(n, mean, m2, A(cnt), mb, q);
  }
  block_moments(n, mean, m2);
  if (threadIdx.x == 0) part[blockIdx.x] = {n, mean, m2};
}

// Blocks run in reverse order of the statistics pass, so the first ones find the tail of x still in L2.
template <typename T, int V, int ITEMS>
__global__ void __launch_bounds__(kThreads)
    nchw_normalize_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t hw, int64_t K, int64_t C,
                          Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type slope) {
  using A = typename AccOf<T>::type;
  constexpr int64_t kStep = int64_t(kThreads) * V, kChunk = kStep * ITEMS;
  const int64_t bid = int64_t(gridDim.x) - 1 - blockIdx.x;
  const int64_t plane = bid / K, k = bid % K, c = plane % C;
  const A mean = aff.mean[plane], a = aff.rstd[plane] * aff.weight(c), beta = aff.bias(c);
  const int64_t lo = k * kChunk, hi = min(lo + kChunk, hw);
  const T* px = x + plane * hw;
  T* py = y + plane * hw;
  const int64_t base = lo + int64_t(threadIdx.x) * V;
  Pack<T, V> pk[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (base + i * kStep < hi) pk[i] = load_pack<T, V>(px + base + i * kStep);
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (base + i * kStep < hi) {
      Pack<T, V> out;
#pragma unroll
      for (int j = 0; j < V; ++j)
        out.v[j] = from_acc<T>(leaky((to_acc(pk[i].v[j]) - mean) * a + beta, slope));
      store_pack<T, V>(py + base + i * kStep, out);
    }
}

// ------------------------------------------------------------------------------------------------
// Forward, channels-last: x is [N, HW, C]. blockDim = (TX, TY); grid = (N * K, ceil(C / V / TX)).
// These kernels hold V channels' parameters and accumulators per thread; the register cap of 2 blocks per
// SM keeps enough loads in flight.
// Thread (tx, ty) owns channels [cv*V, cv*V + V) with cv = blockIdx.y * TX + tx and pixels
// lo + ty, lo + ty + TY, ... of the chunk [k*pix_chunk, (k+1)*pix_chunk).

template <typename T, int V, int ITEMS>
__global__ void __launch_bounds__(kThreads, 2)
    nhwc_stats_kernel(const T* __restrict__ x, int64_t hw, int64_t C, int64_t pix_chunk, int64_t K,
                      Moments<typename AccOf<T>::type>* __restrict__ part) {
  using A = typename AccOf<T>::type;
  const int TX = blockDim.x, TY = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t cv = int64_t(blockIdx.y) * TX + tx;
  const bool active = cv * V < C;
  const int64_t img = blockIdx.x / K, k = blockIdx.x % K;
  const int64_t lo = k * pix_chunk, hi = min(lo + pix_chunk, hw);
  const T* px = x + img * hw * C + cv * V;
  A n = 0, mean[V], m2[V];
#pragma unroll
  for (int j = 0; j < V; ++j) mean[j] = m2[j] = 0;
  if (active) {
    for (int64_t p = lo + ty; p < hi; p += int64_t(TY) * ITEMS) {
      Pack<T, V> pk[ITEMS];
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
        if (p + int64_t(i) * TY < hi) pk[i] = load_pack<T, V>(px + (p + int64_t(i) * TY) * C);
      int cnt = 0;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) cnt += p + int64_t(i) * TY < hi;
      const A inv = A(1) / A(cnt), tot = n + A(cnt), f = A(cnt) / tot;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        A s = 0;
#pragma unroll
        for (int i = 0; i < ITEMS; ++i)
          if (p + int64_t(i) * TY < hi) s += to_acc(pk[i].v[j]);
        const A mb = s * inv;
        A q = 0;
#pragma unroll
        for (int i = 0; i < ITEMS; ++i)
          if (p + int64_t(i) * TY < hi) {
            const A d = to_acc(pk[i].v[j]) - mb;
            q += d * d;
          }
        const A delta = mb - mean[j];
        mean[j] += delta * f;
        m2[j] += q + delta * delta * n * f;
      }
      n = tot;
    }
  }
  // Chan tree over ty through shared memory: slots [field][ty][tx].
  __shared__ A sh_n[kThreads];
  __shared__ A sh_mean[V][kThreads];
  __shared__ A sh_m2[V][kThreads];
  const int slot = ty * TX + tx;
  sh_n[slot] = n;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    sh_mean[j][slot] = mean[j];
    sh_m2[j][slot] = m2[j];
  }
  for (int s = 1; s < TY; s *= 2) {
    __syncthreads();
    if (ty % (2 * s) == 0 && ty + s < TY) {
      const int o = slot + s * TX;
      const A nb = sh_n[o];
      if (nb > A(0)) {
        const A tot = n + nb, f = nb / tot;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const A delta = sh_mean[j][o] - mean[j];
          mean[j] += delta * f;
          m2[j] += sh_m2[j][o] + delta * delta * n * f;
          sh_mean[j][slot] = mean[j];
          sh_m2[j][slot] = m2[j];
        }
        n = tot;
        sh_n[slot] = n;
      }
    }
  }
  if (ty == 0 && active) {
    Moments<A>* out = part + (img * K + k) * C + cv * V;
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = {n, mean[j], m2[j]};
  }
}

template <typename T, int V, int ITEMS>
__global__ void __launch_bounds__(kThreads, 2)
    nhwc_normalize_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t hw, int64_t C, int64_t K,
                          Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type slope) {
  using A = typename AccOf<T>::type;
  const int TX = blockDim.x, TY = blockDim.y;
  const int64_t cv = int64_t(blockIdx.y) * TX + threadIdx.x;
  if (cv * V >= C) return;
  const int64_t bid = int64_t(gridDim.x) - 1 - blockIdx.x;  // reverse order, as in NCHW
  const int64_t img = bid / K, k = bid % K, pix_chunk = int64_t(TY) * ITEMS;
  const int64_t lo = k * pix_chunk, hi = min(lo + pix_chunk, hw);
  A mean[V], a[V], beta[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t c = cv * V + j;
    mean[j] = aff.mean[img * C + c];
    a[j] = aff.rstd[img * C + c] * aff.weight(c);
    beta[j] = aff.bias(c);
  }
  const int64_t off = img * hw * C + cv * V;
  const int64_t p = lo + threadIdx.y;
  Pack<T, V> pk[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (p + int64_t(i) * TY < hi) pk[i] = load_pack<T, V>(x + off + (p + int64_t(i) * TY) * C);
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (p + int64_t(i) * TY < hi) {
      Pack<T, V> out;
#pragma unroll
      for (int j = 0; j < V; ++j)
        out.v[j] = from_acc<T>(leaky((to_acc(pk[i].v[j]) - mean[j]) * a[j] + beta[j], slope));
      store_pack<T, V>(y + off + (p + int64_t(i) * TY) * C, out);
    }
}

// ------------------------------------------------------------------------------------------------
// Merge of the statistics partials: one warp per plane. Partial (n, c, k) sits at
// part[n*sN + c*sC + k*sK]. Exact two-pass in double over the chunks (weighted mean, then M2).

template <typename A>
__global__ void __launch_bounds__(kThreads)
    stats_merge_kernel(const Moments<A>* __restrict__ part, int64_t planes, int64_t C, int64_t K, int64_t sN,
                       int64_t sC, int64_t sK, int64_t hw, double eps, A* __restrict__ mean_out,
                       A* __restrict__ rstd_out) {
  const int64_t plane = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (plane >= planes) return;  // whole warps leave together; no block barrier below
  const Moments<A>* p = part + (plane / C) * sN + (plane % C) * sC;
  double s = 0;
  for (int64_t k = lane; k < K; k += 32) s += double(p[k * sK].n) * double(p[k * sK].mean);
  const double mean = warp_sum(s) / double(hw);
  double q = 0;
  for (int64_t k = lane; k < K; k += 32) {
    const Moments<A> m = p[k * sK];
    const double d = double(m.mean) - mean;
    q += double(m.m2) + double(m.n) * d * d;
  }
  q = warp_sum(q);
  if (lane == 0) {
    const double var = fmax(q / double(hw), 0.0);
    mean_out[plane] = A(mean);
    rstd_out[plane] = A(1.0 / sqrt(var + eps));
  }
}

// ------------------------------------------------------------------------------------------------
// Backward. xhat = (x - mean) * rstd, z = xhat * w + b, dz = dy * (z > 0 ? 1 : slope);
// reduction: sum(dz), sum(dz * xhat) per plane; dx = rstd * w * (dz - mean(dz) - xhat * mean(dz * xhat)).

template <typename A, typename T>
__device__ __forceinline__ void bwd_terms(T xv, T gv, A mean, A rstd, A w, A beta, A slope, A& xh, A& dz) {
  xh = (to_acc(xv) - mean) * rstd;
  const A z = xh * w + beta;
  const A g = to_acc(gv);
  dz = z > A(0) ? g : g * slope;
}

template <typename T, int V, int ITEMS>
__global__ void __launch_bounds__(kThreads)
    nchw_bwd_reduce_kernel(const T* __restrict__ x, const T* __restrict__ dy, int64_t hw, int64_t chunk,
                           int64_t K, int64_t C, Affine<typename AccOf<T>::type> aff,
                           typename AccOf<T>::type slope, Pair<typename AccOf<T>::type>* __restrict__ part) {
  using A = typename AccOf<T>::type;
  const int64_t plane = blockIdx.x / K, k = blockIdx.x % K, c = plane % C;
  const A mean = aff.mean[plane], rstd = aff.rstd[plane], w = aff.weight(c), beta = aff.bias(c);
  const T* px = x + plane * hw;
  const T* pg = dy + plane * hw;
  const int64_t lo = k * chunk, hi = min(lo + chunk, hw);
  constexpr int64_t kStep = int64_t(kThreads) * V;
  A s1 = 0, s2 = 0;
  for (int64_t base = lo + int64_t(threadIdx.x) * V; base < hi; base += kStep * ITEMS) {
    Pack<T, V> xk[ITEMS], gk[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      if (base + i * kStep < hi) {
        xk[i] = load_pack<T, V>(px + base + i * kStep);
        gk[i] = load_pack<T, V>(pg + base + i * kStep);
      }
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      if (base + i * kStep < hi) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          A xh, dz;
          bwd_terms(xk[i].v[j], gk[i].v[j], mean, rstd, w, beta, slope, xh, dz);
          s1 += dz;
          s2 += dz * xh;
        }
      }
  }
  block_sum2(s1, s2);
  if (threadIdx.x == 0) part[blockIdx.x] = {s1, s2};
}

template <typename T, int V, int ITEMS>
__global__ void __launch_bounds__(kThreads)
    nchw_bwd_dx_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t hw,
                       int64_t K, int64_t C, Affine<typename AccOf<T>::type> aff,
                       typename AccOf<T>::type slope,
                       const Pair<typename AccOf<T>::type>* __restrict__ mterms) {
  using A = typename AccOf<T>::type;
  constexpr int64_t kStep = int64_t(kThreads) * V, kChunk = kStep * ITEMS;
  const int64_t bid = int64_t(gridDim.x) - 1 - blockIdx.x;  // reverse order of the reduction pass
  const int64_t plane = bid / K, k = bid % K, c = plane % C;
  const A mean = aff.mean[plane], rstd = aff.rstd[plane], w = aff.weight(c), beta = aff.bias(c);
  const A g = rstd * w, m1 = mterms[plane].a, m2 = mterms[plane].b;
  const int64_t lo = k * kChunk, hi = min(lo + kChunk, hw);
  const int64_t off = plane * hw, base = lo + int64_t(threadIdx.x) * V;
  Pack<T, V> xk[ITEMS], gk[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (base + i * kStep < hi) {
      xk[i] = load_pack<T, V>(x + off + base + i * kStep);
      gk[i] = load_pack<T, V>(dy + off + base + i * kStep);
    }
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (base + i * kStep < hi) {
      Pack<T, V> out;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        A xh, dz;
        bwd_terms(xk[i].v[j], gk[i].v[j], mean, rstd, w, beta, slope, xh, dz);
        out.v[j] = from_acc<T>(g * (dz - m1 - xh * m2));
      }
      store_pack<T, V>(dx + off + base + i * kStep, out);
    }
}

template <typename T, int V, int ITEMS>
__global__ void __launch_bounds__(kThreads, 2)
    nhwc_bwd_reduce_kernel(const T* __restrict__ x, const T* __restrict__ dy, int64_t hw, int64_t C,
                           int64_t pix_chunk, int64_t K, Affine<typename AccOf<T>::type> aff,
                           typename AccOf<T>::type slope, Pair<typename AccOf<T>::type>* __restrict__ part) {
  using A = typename AccOf<T>::type;
  const int TX = blockDim.x, TY = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t cv = int64_t(blockIdx.y) * TX + tx;
  const bool active = cv * V < C;
  const int64_t img = blockIdx.x / K, k = blockIdx.x % K;
  const int64_t lo = k * pix_chunk, hi = min(lo + pix_chunk, hw);
  A s1[V], s2[V], mean[V], rstd[V], w[V], beta[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    s1[j] = s2[j] = 0;
    const int64_t c = active ? cv * V + j : 0;
    mean[j] = aff.mean[img * C + c];
    rstd[j] = aff.rstd[img * C + c];
    w[j] = aff.weight(c);
    beta[j] = aff.bias(c);
  }
  if (active) {
    const int64_t off = img * hw * C + cv * V;
    for (int64_t p = lo + ty; p < hi; p += int64_t(TY) * ITEMS) {
      Pack<T, V> xk[ITEMS], gk[ITEMS];
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
        if (p + int64_t(i) * TY < hi) {
          xk[i] = load_pack<T, V>(x + off + (p + int64_t(i) * TY) * C);
          gk[i] = load_pack<T, V>(dy + off + (p + int64_t(i) * TY) * C);
        }
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
        if (p + int64_t(i) * TY < hi) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            A xh, dz;
            bwd_terms(xk[i].v[j], gk[i].v[j], mean[j], rstd[j], w[j], beta[j], slope, xh, dz);
            s1[j] += dz;
            s2[j] += dz * xh;
          }
        }
    }
  }
  __shared__ A sh1[V][kThreads];
  __shared__ A sh2[V][kThreads];
  const int slot = ty * TX + tx;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    sh1[j][slot] = s1[j];
    sh2[j][slot] = s2[j];
  }
  for (int s = 1; s < TY; s *= 2) {
    __syncthreads();
    if (ty % (2 * s) == 0 && ty + s < TY) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        s1[j] += sh1[j][slot + s * TX];
        s2[j] += sh2[j][slot + s * TX];
        sh1[j][slot] = s1[j];
        sh2[j][slot] = s2[j];
      }
    }
  }
  if (ty == 0 && active) {
    Pair<A>* out = part + (img * K + k) * C + cv * V;
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = {s1[j], s2[j]};
  }
}

template <typename T, int V, int ITEMS>
__global__ void __launch_bounds__(kThreads, 2)
    nhwc_bwd_dx_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t hw,
                       int64_t C, int64_t K, Affine<typename AccOf<T>::type> aff,
                       typename AccOf<T>::type slope,
                       const Pair<typename AccOf<T>::type>* __restrict__ mterms) {
  using A = typename AccOf<T>::type;
  const int TX = blockDim.x, TY = blockDim.y;
  const int64_t cv = int64_t(blockIdx.y) * TX + threadIdx.x;
  if (cv * V >= C) return;
  const int64_t bid = int64_t(gridDim.x) - 1 - blockIdx.x;
  const int64_t img = bid / K, k = bid % K, pix_chunk = int64_t(TY) * ITEMS;
  const int64_t lo = k * pix_chunk, hi = min(lo + pix_chunk, hw);
  A mean[V], rstd[V], w[V], beta[V], m1[V], m2[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t c = cv * V + j, pl = img * C + c;
    mean[j] = aff.mean[pl];
    rstd[j] = aff.rstd[pl];
    w[j] = aff.weight(c);
    beta[j] = aff.bias(c);
    m1[j] = mterms[pl].a;
    m2[j] = mterms[pl].b;
  }
  const int64_t off = img * hw * C + cv * V, p = lo + threadIdx.y;
  Pack<T, V> xk[ITEMS], gk[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (p + int64_t(i) * TY < hi) {
      xk[i] = load_pack<T, V>(x + off + (p + int64_t(i) * TY) * C);
      gk[i] = load_pack<T, V>(dy + off + (p + int64_t(i) * TY) * C);
    }
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (p + int64_t(i) * TY < hi) {
      Pack<T, V> out;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        A xh, dz;
        bwd_terms(xk[i].v[j], gk[i].v[j], mean[j], rstd[j], w[j], beta[j], slope, xh, dz);
        out.v[j] = from_acc<T>(rstd[j] * w[j] * (dz - m1[j] - xh * m2[j]));
      }
      store_pack<T, V>(dx + off + (p + int64_t(i) * TY) * C, out);
    }
}

// Merge of the backward partials, one block per channel c; warp w takes images w, w + kWarps, ...
// Writes mterms[n*C + c] = (mean(dz), mean(dz * xhat)) and the parameter gradients
// dw[c] = sum_n sum(dz * xhat), db[c] = sum_n sum(dz) (either may be null).
template <typename A>
__global__ void __launch_bounds__(kThreads)
    bwd_merge_kernel(const Pair<A>* __restrict__ part, int64_t N, int64_t C, int64_t K, int64_t sN,
                     int64_t sC, int64_t sK, int64_t hw, Pair<A>* __restrict__ mterms, A* __restrict__ dw,
                     A* __restrict__ db) {
  const int64_t c = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double tw = 0, tb = 0;
  for (int64_t n = warp; n < N; n += kWarps) {
    const Pair<A>* p = part + n * sN + c * sC;
    double s1 = 0, s2 = 0;
    for (int64_t k = lane; k < K; k += 32) {
      const Pair<A> v = p[k * sK];
      s1 += double(v.a);
      s2 += double(v.b);
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    if (lane == 0) mterms[n * C + c] = {A(s1 / double(hw)), A(s2 / double(hw))};
    tb += s1;
    tw += s2;
  }
  __shared__ double sh[2][kWarps];
  if (lane == 0) {
    sh[0][warp] = tw;
    sh[1][warp] = tb;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) {
      tw += sh[0][w];
      tb += sh[1][w];
    }
    if (dw) dw[c] = A(tw);
    if (db) db[c] = A(tb);
  }
}

}  // namespace norm
}  // namespace p2phd
