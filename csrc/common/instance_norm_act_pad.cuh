// Fused instance norm + affine + LeakyReLU + residual add + ReflectionPad2d: device code, free of ATen types.
//
// The statistics come from instance_norm_act's kernels (common/instance_norm_act.cuh); this header adds the
// passes that touch the padded tensors:
//   forward  pad_normalize_*: one warp per padded output row; every output element reads the source pixel it
//            reflects (the interior of a row is a contiguous, coalesced read), adds the residual through its
//            strides and writes the padded row with full-width stores. x is read once, y written once.
//   backward pad_bwd_reduce_* / pad_bwd_dx_*: the gradient of a source pixel is the sum of the padded gradient
//            at the 1-9 padded positions that reflect it (common/reflect_pad.h), gathered on the fly in the
//            reduction pass and again in the dx pass, which also writes it as the residual's gradient.
// NCHW kernels move one element per access (a reflected row breaks 16-byte vectors at its borders);
// channels-last kernels move V consecutive channels (16 bytes when C and the pointers allow).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/instance_norm_act.cuh"
#include "common/reflect_pad.h"

namespace p2phd {
namespace norm_pad {

using norm::AccOf;
using norm::Affine;
using norm::from_acc;
using norm::kThreads;
using norm::kWarps;
using norm::leaky;
using norm::Pack;
using norm::Pair;
using norm::to_acc;
using pad::readers;
using pad::reflect;

// Optional residual [N, C, H, W] read through its element strides.
template <typename T>
struct Residual {
  const T* p;  // null: no residual
  int64_t s0, s1, s2, s3;
  bool vec;  // channel stride 1 and 16-byte aligned rows: V channels per load (channels-last kernels)
};

// Geometry of one call: x [N, C, H, W], padded [N, C, H + 2p, W + 2p].
struct Geom {
  int64_t N, C, H, W, p;
  __device__ __forceinline__ int64_t Ho() const { return H + 2 * p; }
  __device__ __forceinline__ int64_t Wo() const { return W + 2 * p; }
};

// ------------------------------------------------------------------------------------------------
// Forward. Warp `row` of the grid writes padded row `row` (NCHW: plane * Ho + oh; channels-last: n * Ho + oh).

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pad_normalize_nchw_kernel(const T* __restrict__ x, T* __restrict__ y, Geom g, Affine<typename AccOf<T>::type> aff,
                              typename AccOf<T>::type slope, Residual<T> res) {
  using A = typename AccOf<T>::type;
  const int64_t Ho = g.Ho(), Wo = g.Wo();
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= g.N * g.C * Ho) return;
  const int lane = threadIdx.x % 32;
  const int64_t plane = row / Ho, oh = row % Ho, n = plane / g.C, c = plane % g.C;
  const int64_t sh = reflect(oh - g.p, g.H);
  const A mean = aff.mean[plane], a = aff.rstd[plane] * aff.weight(c), beta = aff.bias(c);
  const T* px = x + (plane * g.H + sh) * g.W;
  const T* pr = res.p ? res.p + n * res.s0 + c * res.s1 + sh * res.s2 : nullptr;
  T* py = y + row * Wo;
  for (int64_t ow = lane; ow < Wo; ow += 32) {
    const int64_t sw = reflect(ow - g.p, g.W);
    A v = leaky((to_acc(px[sw]) - mean) * a + beta, slope);
    if (pr) v += to_acc(pr[sw * res.s3]);
    py[ow] = from_acc<T>(v);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    pad_normalize_nhwc_kernel(const T* __restrict__ x, T* __restrict__ y, Geom g, Affine<typename AccOf<T>::type> aff,
                              typename AccOf<T>::type slope, Residual<T> res) {
  using A = typename AccOf<T>::type;
  const int64_t Ho = g.Ho(), Wo = g.Wo();
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= g.N * Ho) return;
  const int lane = threadIdx.x % 32;
  const int64_t n = row / Ho, oh = row % Ho, sh = reflect(oh - g.p, g.H);
  const int64_t cvec = g.C / V, items = Wo * cvec;
  const T* px = x + (n * g.H + sh) * g.W * g.C;
  T* py = y + row * Wo * g.C;
  for (int64_t j = lane; j < items; j += 32) {
    const int64_t ow = j / cvec, c0 = (j % cvec) * V, sw = reflect(ow - g.p, g.W);
    const Pack<T, V> xv = norm::load_pack<T, V>(px + sw * g.C + c0);
    A r[V];
    if (res.p) {
      const T* pr = res.p + n * res.s0 + sh * res.s2 + sw * res.s3 + c0 * res.s1;
      if (V > 1 && res.vec) {
        const Pack<T, V> rv = norm::load_pack<T, V>(pr);
#pragma unroll
        for (int k = 0; k < V; ++k) r[k] = to_acc(rv.v[k]);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) r[k] = to_acc(pr[k * res.s1]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) r[k] = A(0);
    }
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t pl = n * g.C + c0 + k;
      const A z = (to_acc(xv.v[k]) - aff.mean[pl]) * aff.rstd[pl] * aff.weight(c0 + k) + aff.bias(c0 + k);
      out.v[k] = from_acc<T>(leaky(z, slope) + r[k]);
    }
    norm::store_pack<T, V>(py + ow * g.C + c0, out);
  }
}

// ------------------------------------------------------------------------------------------------
// Backward. dz = fold(gy) * (z > 0 ? 1 : slope); reduction of sum(dz), sum(dz * xhat) per plane;
// dx = rstd * w * (dz - mean(dz) - xhat * mean(dz * xhat)); grad_residual = fold(gy).

// Sum of V consecutive channels (e = element stride between pixels: 1 NCHW, C channels-last) of the padded
// gradient over the padded positions that reflect source pixel (h, w). `img` points at the padded plane (NCHW)
// or image (channels-last) plus the channel offset.
template <typename T, int V>
__device__ __forceinline__ void fold_gather(const T* __restrict__ img, int64_t h, int64_t w, const Geom& g, int64_t e,
                                            typename AccOf<T>::type (&out)[V]) {
  int64_t rows[3], cols[3];
  const int nr = readers(h, g.H, g.p, rows), nc = readers(w, g.W, g.p, cols);
  const int64_t Wo = g.Wo();
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = 0;
  for (int i = 0; i < nr; ++i)
    for (int j = 0; j < nc; ++j) {
      const Pack<T, V> v = norm::load_pack<T, V>(img + (rows[i] * Wo + cols[j]) * e);
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] += to_acc(v.v[k]);
    }
}

// NCHW reduction: block b = plane * K + k covers source rows [k * rows_per, (k + 1) * rows_per) of the plane;
// warps take rows, lanes columns. One partial per block (kThreads threads, 1-D).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pad_bwd_reduce_nchw_kernel(const T* __restrict__ x, const T* __restrict__ gy, Geom g, int64_t rows_per, int64_t K,
                               Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type slope,
                               Pair<typename AccOf<T>::type>* __restrict__ part) {
  using A = typename AccOf<T>::type;
  const int64_t plane = blockIdx.x / K, k = blockIdx.x % K, c = plane % g.C;
  const A mean = aff.mean[plane], rstd = aff.rstd[plane], w = aff.weight(c), beta = aff.bias(c);
  const int64_t h0 = k * rows_per, h1 = min(h0 + rows_per, g.H);
  const T* pg = gy + plane * g.Ho() * g.Wo();
  const T* px = x + plane * g.H * g.W;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  A s1 = 0, s2 = 0;
  for (int64_t h = h0 + warp; h < h1; h += kWarps)
    for (int64_t wi = lane; wi < g.W; wi += 32) {
      A gv[1];
      fold_gather<T, 1>(pg, h, wi, g, 1, gv);
      const A xh = (to_acc(px[h * g.W + wi]) - mean) * rstd;
      const A dz = xh * w + beta > A(0) ? gv[0] : gv[0] * slope;
      s1 += dz;
      s2 += dz * xh;
    }
  norm::block_sum2(s1, s2);
  if (threadIdx.x == 0) part[blockIdx.x] = {s1, s2};
}

// NCHW dx: one warp per source row (plane * H + h).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pad_bwd_dx_nchw_kernel(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ dx, T* __restrict__ dres,
                           Geom g, Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type slope,
                           const Pair<typename AccOf<T>::type>* __restrict__ mterms) {
  using A = typename AccOf<T>::type;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= g.N * g.C * g.H) return;
  const int lane = threadIdx.x % 32;
  const int64_t plane = row / g.H, h = row % g.H, c = plane % g.C;
  const A mean = aff.mean[plane], rstd = aff.rstd[plane], w = aff.weight(c), beta = aff.bias(c);
  const A gs = rstd * w, m1 = mterms[plane].a, m2 = mterms[plane].b;
  const T* pg = gy + plane * g.Ho() * g.Wo();
  const int64_t off = row * g.W;
  for (int64_t wi = lane; wi < g.W; wi += 32) {
    A gv[1];
    fold_gather<T, 1>(pg, h, wi, g, 1, gv);
    if (dres) dres[off + wi] = from_acc<T>(gv[0]);
    if (dx) {
      const A xh = (to_acc(x[off + wi]) - mean) * rstd;
      const A dz = xh * w + beta > A(0) ? gv[0] : gv[0] * slope;
      dx[off + wi] = from_acc<T>(gs * (dz - m1 - xh * m2));
    }
  }
}

// Channels-last reduction: blockDim (TX, TY), grid (N * K, ceil(C / V / TX)); thread (tx, ty) owns channels
// [cv*V, cv*V + V) and source pixels lo + ty, lo + ty + TY, ... of chunk k. Partials [N][K][C].
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    pad_bwd_reduce_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ gy, Geom g, int64_t pix_chunk, int64_t K,
                               Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type slope,
                               Pair<typename AccOf<T>::type>* __restrict__ part) {
  using A = typename AccOf<T>::type;
  const int TX = blockDim.x, TY = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t cv = int64_t(blockIdx.y) * TX + tx;
  const bool active = cv * V < g.C;
  const int64_t img = blockIdx.x / K, k = blockIdx.x % K, hw = g.H * g.W;
  const int64_t lo = k * pix_chunk, hi = min(lo + pix_chunk, hw);
  A s1[V], s2[V], mean[V], rstd[V], w[V], beta[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    s1[j] = s2[j] = 0;
    const int64_t c = active ? cv * V + j : 0;
    mean[j] = aff.mean[img * g.C + c];
    rstd[j] = aff.rstd[img * g.C + c];
    w[j] = aff.weight(c);
    beta[j] = aff.bias(c);
  }
  if (active) {
    const T* pg = gy + img * g.Ho() * g.Wo() * g.C + cv * V;
    const T* px = x + img * hw * g.C + cv * V;
    for (int64_t q = lo + ty; q < hi; q += TY) {
      A gv[V];
      fold_gather<T, V>(pg, q / g.W, q % g.W, g, g.C, gv);
      const Pack<T, V> xv = norm::load_pack<T, V>(px + q * g.C);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A xh = (to_acc(xv.v[j]) - mean[j]) * rstd[j];
        const A dz = xh * w[j] + beta[j] > A(0) ? gv[j] : gv[j] * slope;
        s1[j] += dz;
        s2[j] += dz * xh;
      }
    }
  }
  // Tree over ty through shared memory, slots [j][ty * TX + tx].
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
    Pair<A>* out = part + (img * K + k) * g.C + cv * V;
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = {s1[j], s2[j]};
  }
}

// Channels-last dx: one warp per source row (n * H + h); lanes walk its W * C / V channel vectors.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    pad_bwd_dx_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ dx, T* __restrict__ dres,
                           Geom g, Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type slope,
                           const Pair<typename AccOf<T>::type>* __restrict__ mterms) {
  using A = typename AccOf<T>::type;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= g.N * g.H) return;
  const int lane = threadIdx.x % 32;
  const int64_t n = row / g.H, h = row % g.H, cvec = g.C / V, items = g.W * cvec;
  const T* pg = gy + n * g.Ho() * g.Wo() * g.C;
  const int64_t off = row * g.W * g.C;
  for (int64_t j = lane; j < items; j += 32) {
    const int64_t wi = j / cvec, c0 = (j % cvec) * V, e = off + wi * g.C + c0;
    A gv[V];
    fold_gather<T, V>(pg + c0, h, wi, g, g.C, gv);
    if (dres) {
      Pack<T, V> r;
#pragma unroll
      for (int k = 0; k < V; ++k) r.v[k] = from_acc<T>(gv[k]);
      norm::store_pack<T, V>(dres + e, r);
    }
    if (dx) {
      const Pack<T, V> xv = norm::load_pack<T, V>(x + e);
      Pack<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int64_t c = c0 + k, pl = n * g.C + c;
        const A rstd = aff.rstd[pl], w = aff.weight(c);
        const A xh = (to_acc(xv.v[k]) - aff.mean[pl]) * rstd;
        const A dz = xh * w + aff.bias(c) > A(0) ? gv[k] : gv[k] * slope;
        out.v[k] = from_acc<T>(rstd * w * (dz - mterms[pl].a - xh * mterms[pl].b));
      }
      norm::store_pack<T, V>(dx + e, out);
    }
  }
}

}  // namespace norm_pad
}  // namespace p2phd
