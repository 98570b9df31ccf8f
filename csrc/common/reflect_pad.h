// Geometry of ReflectionPad2d, shared by the CPU and CUDA kernels of instance_norm_act_pad (host and device,
// free of ATen types).
//
// Along one axis of length n padded by p (0 <= p < n), padded index o in [0, n + 2p) reads source index
// reflect(o - p, n). The backward needs the inverse: the padded indices that read a given source index s.
// There are at most three: s + p itself, the mirror in the leading border (p - s, when 1 <= s <= p) and the
// mirror in the trailing border (2(n-1) - s + p, when n-1-p <= s <= n-2). Both mirrors can exist at once when
// n is small (n = 3, p = 2, s = 1).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define P2PHD_HD __host__ __device__ __forceinline__
#else
#define P2PHD_HD inline
#endif

namespace p2phd {
namespace pad {

// Source index of signed offset i (= o - p) on an axis of length n.
P2PHD_HD int64_t reflect(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// Padded indices that read source index s; writes them to out[0..count) and returns count (1 to 3).
P2PHD_HD int readers(int64_t s, int64_t n, int64_t p, int64_t out[3]) {
  int k = 0;
  out[k++] = s + p;
  if (s >= 1 && s <= p) out[k++] = p - s;
  if (s >= n - 1 - p && s <= n - 2) out[k++] = 2 * (n - 1) - s + p;
  return k;
}

}  // namespace pad
}  // namespace p2phd
