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
