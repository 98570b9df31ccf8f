// Statistics and channel-tile helpers shared by the CPU norm kernels (instance_norm_act, instance_norm_act_pad).
//
// The loop bodies here carry no target attribute and are always inlined: each kernel file inlines them into its
// own per-instruction-set wrappers (baseline, AVX2, AVX-512), where they are vectorized for that set.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/cpu_elem.h"

#define P2PHD_INLINE inline __attribute__((always_inline))

namespace pix2pixhd_fast {

// Running (count, mean, M2) in double; Chan's parallel merge.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
  void merge(double nb, double mb, double m2b) {
    if (nb <= 0) return;
    const double tot = n + nb, delta = mb - mean, f = nb / tot;
    mean += delta * f;
    m2 += m2b + delta * delta * n * f;
    n = tot;
  }
};

template <typename A>
inline A rstd_of(double var, double eps) {
  return static_cast<A>(1.0 / std::sqrt(std::max(var, 0.0) + eps));
}

// Lanes of the contiguous reductions: two 512-bit registers' worth, so that two dependency chains overlap.
template <typename A>
constexpr int kSumLanes = 128 / sizeof(A);

// Two-pass moments of one contiguous block of `len` elements that sits in L1: *mean = the block mean, *m2 = the
// sum of squared deviations from it. Plain lane loops (no callables): GCC vectorizes them for the caller's
// instruction set, where the same sums written through lambdas stayed scalar.
template <typename T>
P2PHD_INLINE void block_moments(const T* __restrict__ p, int64_t len, typename Elem<T>::acc* mean,
                                typename Elem<T>::acc* m2) {
  using A = typename Elem<T>::acc;
  constexpr int L = kSumLanes<A>;
  A s[L] = {};
  int64_t i = 0;
  for (; i + L <= len; i += L)
    for (int j = 0; j < L; ++j) s[j] += Elem<T>::load(p[i + j]);
  A t = 0;
  for (; i < len; ++i) t += Elem<T>::load(p[i]);
  for (int j = 0; j < L; ++j) t += s[j];
  const A mb = t / static_cast<A>(len);
  A q[L] = {};
  for (i = 0; i + L <= len; i += L)
    for (int j = 0; j < L; ++j) {
      const A d = Elem<T>::load(p[i + j]) - mb;
      q[j] += d * d;
    }
  A u = 0;
  for (; i < len; ++i) {
    const A d = Elem<T>::load(p[i]) - mb;
    u += d * d;
  }
  for (int j = 0; j < L; ++j) u += q[j];
  *mean = mb;
  *m2 = u;
}

// Pixels summed per accumulator update in the channels-last reductions. Accumulators are per channel arrays in
// memory (C is a run-time size), so each update is a load and a store that the next pixel's update waits on
// (store-to-load forwarding); adding U pixels' values first divides those waits by U. The walk stays
// sequential, which the hardware prefetcher needs: sweeping one channel tile at a time across pixels (to keep
// accumulators in registers) strides through memory and measured slower.
constexpr int kPixelUnroll = 4;

// s[c] += sum over q in [0, len) of f(q, c), for c in [0, C), sequentially over pixels.
template <typename A, typename F>
P2PHD_INLINE void cl_accumulate(int64_t len, int64_t C, A* __restrict__ s, const F& f) {
  constexpr int U = kPixelUnroll;
  int64_t q = 0;
  // ivdep: s never overlaps the data f reads; for fp32 data the compiler cannot prove it and stays scalar.
  for (; q + U <= len; q += U)
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) s[c] += (f(q, c) + f(q + 1, c)) + (f(q + 2, c) + f(q + 3, c));
  for (; q < len; ++q)
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) s[c] += f(q, c);
}

// Channels-last backward sums over `len` pixels of C channels: s1[c] += sum(dz), s2[c] += sum(dz * xhat), with
// xhat = (x - mean) * rstd, dz = g where xhat * w + beta > 0, else g * slope. x is of type T, the incoming gradient
// of G (T itself, or the folded float gradient of the padded norm); coefficient arrays hold C values each.
template <typename T, typename G>
P2PHD_INLINE void cl_dz_sums(const T* __restrict__ px, const G* __restrict__ pg, int64_t len, int64_t C,
                             const typename Elem<T>::acc* __restrict__ mean,
                             const typename Elem<T>::acc* __restrict__ rstd,
                             const typename Elem<T>::acc* __restrict__ w,
                             const typename Elem<T>::acc* __restrict__ beta, typename Elem<T>::acc slope,
                             typename Elem<T>::acc* __restrict__ s1, typename Elem<T>::acc* __restrict__ s2) {
  using A = typename Elem<T>::acc;
  const auto sums = [&](int64_t q, int64_t c, A& t1, A& t2) {
    const A xh = (Elem<T>::load(px[q * C + c]) - mean[c]) * rstd[c];
    const A g = Elem<G>::load(pg[q * C + c]);
    const A dz = xh * w[c] + beta[c] > A(0) ? g : g * slope;
    t1 += dz;
    t2 += dz * xh;
  };
  int64_t q = 0;
  for (; q + kPixelUnroll <= len; q += kPixelUnroll)
#pragma GCC ivdep  // s1, s2 never overlap x or the gradient
    for (int64_t c = 0; c < C; ++c) {
      A t1 = 0, t2 = 0;
      for (int u = 0; u < kPixelUnroll; ++u) sums(q + u, c, t1, t2);
      s1[c] += t1;
      s2[c] += t2;
    }
  for (; q < len; ++q)
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) sums(q, c, s1[c], s2[c]);
}

// Totals of the backward's per-partial sums: K partials per image, laid out [N][K][C] in p1 (sum dz) and p2
// (sum dz * xhat). Writes the totals per plane (sdz, sdzx, [N][C], double) and their means over the hw pixels
// (m1, m2, in the accumulation type) that the dx pass uses.
template <typename A>
inline void merge_dz_partials(const double* p1, const double* p2, int64_t N, int64_t K, int64_t C, int64_t hw,
                              double* sdz, double* sdzx, A* m1, A* m2) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double a1 = 0, a2 = 0;
      for (int64_t k = 0; k < K; ++k) {
        a1 += p1[(n * K + k) * C + c];
        a2 += p2[(n * K + k) * C + c];
      }
      sdz[n * C + c] = a1;
      sdzx[n * C + c] = a2;
      m1[n * C + c] = static_cast<A>(a1 / hw);
      m2[n * C + c] = static_cast<A>(a2 / hw);
    }
}

// The widest loop variant this CPU runs: the kernels compile their loops once per set and pick one at run time.
enum class CpuIsa { kBase, kAvx2, kAvx512 };

inline CpuIsa cpu_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return CpuIsa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return CpuIsa::kAvx2;
#endif
  return CpuIsa::kBase;
}

// Per-channel two-pass moments of one block of `len` channels-last pixels (C channels each) that sits in L1:
// mb[c] = block mean, m2[c] = sum of squared deviations from it. The mean is exact within the block, so a large
// offset (x + 1000) costs no precision.
template <typename T>
P2PHD_INLINE void cl_block_moments(const T* __restrict__ p, int64_t len, int64_t C,
                                   typename Elem<T>::acc* __restrict__ mb, typename Elem<T>::acc* __restrict__ m2) {
  using A = typename Elem<T>::acc;
  for (int64_t c = 0; c < C; ++c) mb[c] = m2[c] = 0;
  cl_accumulate(len, C, mb, [&](int64_t q, int64_t c) { return Elem<T>::load(p[q * C + c]); });
  const A inv = A(1) / static_cast<A>(len);
  for (int64_t c = 0; c < C; ++c) mb[c] *= inv;
  cl_accumulate(len, C, m2, [&](int64_t q, int64_t c) {
    const A d = Elem<T>::load(p[q * C + c]) - mb[c];
    return d * d;
  });
}

}  // namespace pix2pixhd_fast
