// Fused instance norm + affine + LeakyReLU (forward and backward): CPU kernels.
//
// NCHW: one (n,c) plane per task. The statistics pass leaves the plane in L2 (512 KB for 256x512 fp32),
// so the normalize pass re-reads it from cache: one pass over memory for x plus the write of y.
// Channels-last: never converted to NCHW (PyTorch's own instance norm does that, twice). Statistics are
// accumulated per channel along C (contiguous, vectorized) over pixel chunks, one partial per chunk,
// merged afterwards; the normalize pass is a fused elementwise loop along C.
//
// Statistics: each block of ~2K elements (NCHW) or pixels (channels-last) is summed twice while it sits
// in L1 (mean, then squared deviations from that mean), and blocks are merged with Chan's formula in
// double. Exact two-pass within a block, so a large mean offset (x + 1000) costs no precision.
//
// The extension is compiled without per-ISA flags (at::vec would be its scalar fallback here), so the
// hot loops are plain fixed-width lane loops that the compiler vectorizes, stamped out for AVX-512, AVX2
// and the baseline ISA and picked once at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_elem.h"
#include "common/cpu_norm_loops.h"
#include "common/instance_norm_act_host.h"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

using namespace norm_host;

template <typename T>
using acc_t = typename Elem<T>::acc;

// Lanes per accumulator array: two 512-bit registers' worth, so that two dependency chains overlap.
template <typename A>
constexpr int kLanes = 128 / sizeof(A);

constexpr int64_t kBlock = 2048;  // NCHW elements per two-pass block (8 KB fp32: stays in L1)

template <typename A>
inline A slope_select(A z, A slope) {
  return z > A(0) ? z : z * slope;
}

// ------------------------------------------------------------------------------------------------
// Loop bodies. Always inlined into the ISA-specific wrappers below, which decide the vector width.

// Moments of one contiguous range.
template <typename T>
P2PHD_INLINE void moments_body(const T* __restrict__ x, int64_t n, Moments* out) {
  using A = acc_t<T>;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = std::min(kBlock, n - b0);
    A mb, m2;
    block_moments(x + b0, len, &mb, &m2);
    out->merge(static_cast<double>(len), mb, m2);
  }
}

// y = act((x - mean) * a + beta) over one contiguous range.
template <typename T>
P2PHD_INLINE void normalize_body(const T* __restrict__ x, T* __restrict__ y, int64_t n, acc_t<T> mean,
                                 acc_t<T> a, acc_t<T> beta, acc_t<T> slope) {
  using A = acc_t<T>;
  for (int64_t i = 0; i < n; ++i) {
    const A z = (Elem<T>::load(x[i]) - mean) * a + beta;
    y[i] = Elem<T>::store(slope_select(z, slope));
  }
}

// Backward sums over one contiguous range: sum(dz), sum(dz * xhat), with
// xhat = (x - mean) * rstd, z = xhat * w + beta, dz = dy * (z > 0 ? 1 : slope).
template <typename T>
P2PHD_INLINE void bwd_sums_body(const T* __restrict__ x, const T* __restrict__ dy, int64_t n, acc_t<T> mean,
                                acc_t<T> rstd, acc_t<T> w, acc_t<T> beta, acc_t<T> slope, double* sdz,
                                double* sdzx) {
  using A = acc_t<T>;
  constexpr int L = kLanes<A>;
  double d1 = 0, d2 = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = std::min(kBlock, n - b0);
    const T* px = x + b0;
    const T* pg = dy + b0;
    A s1[L] = {}, s2[L] = {};
    int64_t i = 0;
    for (; i + L <= len; i += L)
      for (int j = 0; j < L; ++j) {
        const A xh = (Elem<T>::load(px[i + j]) - mean) * rstd;
        const A z = xh * w + beta;
        const A g = Elem<T>::load(pg[i + j]);
        const A dz = z > A(0) ? g : g * slope;
        s1[j] += dz;
        s2[j] += dz * xh;
      }
    A t1 = 0, t2 = 0;
    for (; i < len; ++i) {
      const A xh = (Elem<T>::load(px[i]) - mean) * rstd;
      const A z = xh * w + beta;
      const A g = Elem<T>::load(pg[i]);
      const A dz = z > A(0) ? g : g * slope;
      t1 += dz;
      t2 += dz * xh;
    }
    for (int j = 0; j < L; ++j) {
      t1 += s1[j];
      t2 += s2[j];
    }
    d1 += t1;
    d2 += t2;
  }
  *sdz += d1;
  *sdzx += d2;
}

// dx = rstd * w * (dz - m1 - xhat * m2), m1 = mean(dz), m2 = mean(dz * xhat) over the plane.
template <typename T>
P2PHD_INLINE void bwd_dx_body(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                              int64_t n, acc_t<T> mean, acc_t<T> rstd, acc_t<T> w, acc_t<T> beta,
                              acc_t<T> slope, acc_t<T> m1, acc_t<T> m2) {
  using A = acc_t<T>;
  const A gscale = rstd * w;
  for (int64_t i = 0; i < n; ++i) {
    const A xh = (Elem<T>::load(x[i]) - mean) * rstd;
    const A z = xh * w + beta;
    const A g = Elem<T>::load(dy[i]);
    const A dz = z > A(0) ? g : g * slope;
    dx[i] = Elem<T>::store(gscale * (dz - m1 - xh * m2));
  }
}

// Channels-last: per-channel moments of `np` pixels of C channels, merged into cnt/mean/m2[C] (a chunk's
// partial). `s` is scratch of 2*C accumulators.
template <typename T>
P2PHD_INLINE void cl_moments_body(const T* __restrict__ x, int64_t np, int64_t C, acc_t<T>* __restrict__ s,
                                  double* __restrict__ mean, double* __restrict__ m2, double* cnt) {
  using A = acc_t<T>;
  A* __restrict__ mb = s + C;
  const int64_t bp = std::max<int64_t>(1, kBlock / C);  // pixels per two-pass block
  for (int64_t p0 = 0; p0 < np; p0 += bp) {
    const int64_t len = std::min(bp, np - p0);
    cl_block_moments(x + p0 * C, len, C, mb, s);
    // Chan merge of this block (len pixels) into the chunk's running per-channel moments.
    const double tot = *cnt + len, f = len / tot, na = *cnt;
    for (int64_t c = 0; c < C; ++c) {
      const double delta = static_cast<double>(mb[c]) - mean[c];
      mean[c] += delta * f;
      m2[c] += static_cast<double>(s[c]) + delta * delta * na * f;
    }
    *cnt = tot;
  }
}

template <typename T>
P2PHD_INLINE void cl_normalize_body(const T* __restrict__ x, T* __restrict__ y, int64_t np, int64_t C,
                                    const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ a,
                                    const acc_t<T>* __restrict__ beta, acc_t<T> slope) {
  using A = acc_t<T>;
  for (int64_t q = 0; q < np; ++q) {
    const T* __restrict__ px = x + q * C;
    T* __restrict__ py = y + q * C;
    for (int64_t c = 0; c < C; ++c) {
      const A z = (Elem<T>::load(px[c]) - mean[c]) * a[c] + beta[c];
      py[c] = Elem<T>::store(slope_select(z, slope));
    }
  }
}

// Per-plane coefficients for the channels-last backward loops, one array of C each.
template <typename A>
struct ClCoef {
  const A* mean;
  const A* rstd;
  const A* w;
  const A* beta;
  const A* m1;
  const A* m2;
};

// Channels-last backward sums over `np` pixels: sdz[c] += sum(dz), sdzx[c] += sum(dz * xhat), per pixel block
// (float partials, double totals). `s` is scratch of 2*C accumulators.
template <typename T>
P2PHD_INLINE void cl_bwd_sums_body(const T* __restrict__ x, const T* __restrict__ dy, int64_t np, int64_t C,
                                   ClCoef<acc_t<T>> k, acc_t<T> slope, acc_t<T>* __restrict__ s,
                                   double* __restrict__ sdz, double* __restrict__ sdzx) {
  using A = acc_t<T>;
  A* __restrict__ s1 = s;
  A* __restrict__ s2 = s + C;
  const A* __restrict__ mean = k.mean;
  const A* __restrict__ rstd = k.rstd;
  const A* __restrict__ w = k.w;
  const A* __restrict__ beta = k.beta;
  const int64_t bp = std::max<int64_t>(1, kBlock / C);
  for (int64_t p0 = 0; p0 < np; p0 += bp) {
    const int64_t len = std::min(bp, np - p0);
    for (int64_t c = 0; c < C; ++c) s1[c] = s2[c] = 0;
    cl_dz_sums(x + p0 * C, dy + p0 * C, len, C, mean, rstd, w, beta, slope, s1, s2);
    for (int64_t c = 0; c < C; ++c) {
      sdz[c] += s1[c];
      sdzx[c] += s2[c];
    }
  }
}

template <typename T>
P2PHD_INLINE void cl_bwd_dx_body(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                                 int64_t np, int64_t C, ClCoef<acc_t<T>> k, acc_t<T> slope) {
  using A = acc_t<T>;
  const A* __restrict__ mean = k.mean;
  const A* __restrict__ rstd = k.rstd;
  const A* __restrict__ w = k.w;
  const A* __restrict__ beta = k.beta;
  const A* __restrict__ m1 = k.m1;
  const A* __restrict__ m2 = k.m2;
  for (int64_t q = 0; q < np; ++q) {
    const T* __restrict__ px = x + q * C;
    const T* __restrict__ pg = dy + q * C;
    T* __restrict__ pd = dx + q * C;
    for (int64_t c = 0; c < C; ++c) {
      const A xh = (Elem<T>::load(px[c]) - mean[c]) * rstd[c];
      const A z = xh * w[c] + beta[c];
      const A g = Elem<T>::load(pg[c]);
      const A dz = z > A(0) ? g : g * slope;
      pd[c] = Elem<T>::store(rstd[c] * w[c] * (dz - m1[c] - xh * m2[c]));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// ISA variants: each wrapper compiles the inlined body for its target; one table is picked at run time.

template <typename T>
struct Loops {
  using A = acc_t<T>;
  void (*moments)(const T*, int64_t, Moments*);
  void (*normalize)(const T*, T*, int64_t, A, A, A, A);
  void (*bwd_sums)(const T*, const T*, int64_t, A, A, A, A, A, double*, double*);
  void (*bwd_dx)(const T*, const T*, T*, int64_t, A, A, A, A, A, A, A);
  void (*cl_moments)(const T*, int64_t, int64_t, A*, double*, double*, double*);
  void (*cl_normalize)(const T*, T*, int64_t, int64_t, const A*, const A*, const A*, A);
  void (*cl_bwd_sums)(const T*, const T*, int64_t, int64_t, ClCoef<A>, A, A*, double*, double*);
  void (*cl_bwd_dx)(const T*, const T*, T*, int64_t, int64_t, ClCoef<A>, A);
};

#define P2PHD_DEFINE_LOOPS(NAME, ATTR)                                                                    \
  template <typename T>                                                                                   \
  struct NAME {                                                                                           \
    using A = acc_t<T>;                                                                                   \
    ATTR static void moments(const T* x, int64_t n, Moments* o) { moments_body<T>(x, n, o); }             \
    ATTR static void normalize(const T* x, T* y, int64_t n, A m, A a, A b, A s) {                        \
      normalize_body<T>(x, y, n, m, a, b, s);                                                             \
    }                                                                                                     \
    ATTR static void bwd_sums(const T* x, const T* g, int64_t n, A m, A r, A w, A b, A s, double* d1,    \
                              double* d2) {                                                               \
      bwd_sums_body<T>(x, g, n, m, r, w, b, s, d1, d2);                                                   \
    }                                                                                                     \
    ATTR static void bwd_dx(const T* x, const T* g, T* d, int64_t n, A m, A r, A w, A b, A s, A m1,      \
                            A m2) {                                                                       \
      bwd_dx_body<T>(x, g, d, n, m, r, w, b, s, m1, m2);                                                  \
    }                                                                                                     \
    ATTR static void cl_moments(const T* x, int64_t np, int64_t C, A* s, double* m, double* m2,          \
                                double* n) {                                                              \
      cl_moments_body<T>(x, np, C, s, m, m2, n);                                                          \
    }                                                                                                     \
    ATTR static void cl_normalize(const T* x, T* y, int64_t np, int64_t C, const A* m, const A* a,       \
                                  const A* b, A s) {                                                      \
      cl_normalize_body<T>(x, y, np, C, m, a, b, s);                                                      \
    }                                                                                                     \
    ATTR static void cl_bwd_sums(const T* x, const T* g, int64_t np, int64_t C, ClCoef<A> k, A s, A* t,  \
                                 double* d1, double* d2) {                                                \
      cl_bwd_sums_body<T>(x, g, np, C, k, s, t, d1, d2);                                                  \
    }                                                                                                     \
    ATTR static void cl_bwd_dx(const T* x, const T* g, T* d, int64_t np, int64_t C, ClCoef<A> k, A s) {  \
      cl_bwd_dx_body<T>(x, g, d, np, C, k, s);                                                            \
    }                                                                                                     \
    static Loops<T> table() {                                                                             \
      return {moments, normalize, bwd_sums, bwd_dx, cl_moments, cl_normalize, cl_bwd_sums, cl_bwd_dx};    \
    }                                                                                                     \
  };

P2PHD_DEFINE_LOOPS(LoopsBase, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define P2PHD_NORM_X86 1
P2PHD_DEFINE_LOOPS(LoopsAvx2, __attribute__((target("avx2,fma,f16c"))))
P2PHD_DEFINE_LOOPS(LoopsAvx512,
                   __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))))
#endif

template <typename T>
const Loops<T>& loops() {
  static const Loops<T> table = [] {
    switch (cpu_isa()) {
#ifdef P2PHD_NORM_X86
      case CpuIsa::kAvx512:
        return LoopsAvx512<T>::table();
      case CpuIsa::kAvx2:
        return LoopsAvx2<T>::table();
#endif
      default:
        return LoopsBase<T>::table();
    }
  }();
  return table;
}

// ------------------------------------------------------------------------------------------------
// Drivers

// Whether to give each thread whole planes (statistics then normalize while the plane is in cache) or to
// split planes into chunks (too few planes to keep every thread busy).
bool whole_planes(int64_t planes) {
  const int64_t nt = at::get_num_threads();
  return planes % nt == 0 || planes >= 8 * nt;
}

int64_t chunk_len(int64_t hw) {  // NCHW elements per task when planes are split
  return std::max<int64_t>(kBlock * 8, (hw + 63) / 64);
}


template <typename T>
void forward_nchw(const at::Tensor& x, at::Tensor& y, const acc_t<T>* w, const acc_t<T>* b, double eps,
                  acc_t<T> slope, acc_t<T>* mean_out, acc_t<T>* rstd_out) {
  using A = acc_t<T>;
  const auto& L = loops<T>();
  const int64_t C = x.size(1), hw = x.size(2) * x.size(3), planes = x.size(0) * C;
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  // Per plane: stats in double, stored as float outputs; the normalize uses A-typed values (double for
  // fp64 input, so the fp64 path keeps full precision).
  auto finish = [&](int64_t pl, const Moments& m) {
    const double mean = m.mean, var = m.m2 / static_cast<double>(hw);
    const A r = rstd_of<A>(var, eps);
    mean_out[pl] = static_cast<A>(mean);
    rstd_out[pl] = r;
    const int64_t c = pl % C;
    const A wv = w ? w[c] : A(1), bv = b ? b[c] : A(0);
    return std::array<A, 3>{static_cast<A>(mean), r * wv, bv};
  };
  if (whole_planes(planes)) {
    at::parallel_for(0, planes, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t pl = lo; pl < hi; ++pl) {
        Moments m;
        L.moments(xp + pl * hw, hw, &m);
        const auto k = finish(pl, m);
        L.normalize(xp + pl * hw, yp + pl * hw, hw, k[0], k[1], k[2], slope);
      }
    });
    return;
  }
  const int64_t cl = chunk_len(hw), nchunk = (hw + cl - 1) / cl;
  std::vector<Moments> part(planes * nchunk);
  at::parallel_for(0, planes * nchunk, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t pl = t / nchunk, c0 = (t % nchunk) * cl;
      L.moments(xp + pl * hw + c0, std::min(cl, hw - c0), &part[t]);
    }
  });
  std::vector<std::array<A, 3>> coef(planes);
  for (int64_t pl = 0; pl < planes; ++pl) {
    Moments m;
    for (int64_t k = 0; k < nchunk; ++k) m.merge(part[pl * nchunk + k].n, part[pl * nchunk + k].mean,
                                                 part[pl * nchunk + k].m2);
    coef[pl] = finish(pl, m);
  }
  at::parallel_for(0, planes * nchunk, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t pl = t / nchunk, c0 = (t % nchunk) * cl;
      const auto& k = coef[pl];
      L.normalize(xp + pl * hw + c0, yp + pl * hw + c0, std::min(cl, hw - c0), k[0], k[1], k[2], slope);
    }
  });
}

int64_t cl_chunk_pixels(int64_t C) { return std::max<int64_t>(1, kBlock * 4 / C); }

// Calls f(n, p0, p1) for pixel ranges [p0, p1) of image n covering global pixels [lo, hi) of N*hw.
template <typename F>
void for_image_ranges(int64_t lo, int64_t hi, int64_t hw, const F& f) {
  while (lo < hi) {
    const int64_t n = lo / hw, p0 = lo - n * hw, p1 = std::min(hw, p0 + (hi - lo));
    f(n, p0, p1);
    lo += p1 - p0;
  }
}

template <typename T>
void forward_cl(const at::Tensor& x, at::Tensor& y, const acc_t<T>* w, const acc_t<T>* b, double eps,
                acc_t<T> slope, acc_t<T>* mean_out, acc_t<T>* rstd_out) {
  using A = acc_t<T>;
  const auto& L = loops<T>();
  const int64_t N = x.size(0), C = x.size(1), hw = x.size(2) * x.size(3);
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  const int64_t cp = cl_chunk_pixels(C), nchunk = (hw + cp - 1) / cp;
  // Partials [N][nchunk][C] (mean, M2); counts follow from the chunk geometry.
  std::vector<double> pmean(N * nchunk * C, 0.0), pm2(N * nchunk * C, 0.0);
  at::parallel_for(0, N * nchunk, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> scratch(2 * C);
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t n = t / nchunk, p0 = (t % nchunk) * cp;
      double cnt = 0;
      L.cl_moments(xp + (n * hw + p0) * C, std::min(cp, hw - p0), C, scratch.data(), &pmean[t * C],
                   &pm2[t * C], &cnt);
    }
  });
  // Merge chunks: exact two-pass over the partials (mean of means weighted by counts, then M2).
  std::vector<A> kmean(N * C), ka(N * C), kb(N * C);
  at::parallel_for(0, N * C, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t pl = lo; pl < hi; ++pl) {
      const int64_t n = pl / C, c = pl % C;
      double s = 0;
      for (int64_t k = 0; k < nchunk; ++k)
        s += std::min(cp, hw - k * cp) * pmean[(n * nchunk + k) * C + c];
      const double mean = s / static_cast<double>(hw);
      double m2 = 0;
      for (int64_t k = 0; k < nchunk; ++k) {
        const double d = pmean[(n * nchunk + k) * C + c] - mean;
        m2 += pm2[(n * nchunk + k) * C + c] + std::min(cp, hw - k * cp) * d * d;
      }
      const A r = rstd_of<A>(m2 / static_cast<double>(hw), eps);
      mean_out[pl] = static_cast<A>(mean);
      rstd_out[pl] = r;
      kmean[pl] = static_cast<A>(mean);
      ka[pl] = r * (w ? w[c] : A(1));
      kb[pl] = b ? b[c] : A(0);
    }
  });
  at::parallel_for(0, N * hw, cp, [&](int64_t lo, int64_t hi) {
    for_image_ranges(lo, hi, hw, [&](int64_t n, int64_t p0, int64_t p1) {
      L.cl_normalize(xp + (n * hw + p0) * C, yp + (n * hw + p0) * C, p1 - p0, C, &kmean[n * C], &ka[n * C],
                     &kb[n * C], slope);
    });
  });
}

template <typename T>
void backward_nchw(const at::Tensor& x, const at::Tensor& gy, at::Tensor* gx, const acc_t<T>* meanp,
                   const acc_t<T>* rstdp, const acc_t<T>* w, const acc_t<T>* b, acc_t<T> slope, double* sdz,
                   double* sdzx) {
  using A = acc_t<T>;
  const auto& L = loops<T>();
  const int64_t C = x.size(1), hw = x.size(2) * x.size(3), planes = x.size(0) * C;
  const T* xp = x.const_data_ptr<T>();
  const T* gp = gy.const_data_ptr<T>();
  T* dp = gx ? gx->mutable_data_ptr<T>() : nullptr;
  auto params = [&](int64_t pl) {
    const int64_t c = pl % C;
    return std::array<A, 4>{meanp[pl], rstdp[pl], w ? w[c] : A(1),
                            b ? b[c] : A(0)};
  };
  auto dx_coef = [&](int64_t pl) {  // m1, m2
    return std::array<A, 2>{static_cast<A>(sdz[pl] / hw), static_cast<A>(sdzx[pl] / hw)};
  };
  if (whole_planes(planes)) {
    at::parallel_for(0, planes, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t pl = lo; pl < hi; ++pl) {
        const auto k = params(pl);
        sdz[pl] = sdzx[pl] = 0;
        L.bwd_sums(xp + pl * hw, gp + pl * hw, hw, k[0], k[1], k[2], k[3], slope, &sdz[pl], &sdzx[pl]);
        if (dp) {
          const auto m = dx_coef(pl);
          L.bwd_dx(xp + pl * hw, gp + pl * hw, dp + pl * hw, hw, k[0], k[1], k[2], k[3], slope, m[0], m[1]);
        }
      }
    });
    return;
  }
  const int64_t cl = chunk_len(hw), nchunk = (hw + cl - 1) / cl;
  std::vector<double> p1(planes * nchunk, 0.0), p2(planes * nchunk, 0.0);
  at::parallel_for(0, planes * nchunk, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t pl = t / nchunk, c0 = (t % nchunk) * cl;
      const auto k = params(pl);
      L.bwd_sums(xp + pl * hw + c0, gp + pl * hw + c0, std::min(cl, hw - c0), k[0], k[1], k[2], k[3], slope,
                 &p1[t], &p2[t]);
    }
  });
  for (int64_t pl = 0; pl < planes; ++pl) {
    sdz[pl] = sdzx[pl] = 0;
    for (int64_t k = 0; k < nchunk; ++k) {
      sdz[pl] += p1[pl * nchunk + k];
      sdzx[pl] += p2[pl * nchunk + k];
    }
  }
  if (!dp) return;
  at::parallel_for(0, planes * nchunk, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t pl = t / nchunk, c0 = (t % nchunk) * cl;
      const auto k = params(pl);
      const auto m = dx_coef(pl);
      L.bwd_dx(xp + pl * hw + c0, gp + pl * hw + c0, dp + pl * hw + c0, std::min(cl, hw - c0), k[0], k[1],
               k[2], k[3], slope, m[0], m[1]);
    }
  });
}

template <typename T>
void backward_cl(const at::Tensor& x, const at::Tensor& gy, at::Tensor* gx, const acc_t<T>* meanp,
                 const acc_t<T>* rstdp, const acc_t<T>* w, const acc_t<T>* b, acc_t<T> slope, double* sdz,
                 double* sdzx) {
  using A = acc_t<T>;
  const auto& L = loops<T>();
  const int64_t N = x.size(0), C = x.size(1), hw = x.size(2) * x.size(3);
  const T* xp = x.const_data_ptr<T>();
  const T* gp = gy.const_data_ptr<T>();
  T* dp = gx ? gx->mutable_data_ptr<T>() : nullptr;
  // Per-plane coefficient arrays, [N][C] each.
  std::vector<A> kmean(N * C), krstd(N * C), kw(N * C), kb(N * C), km1(N * C), km2(N * C);
  for (int64_t pl = 0; pl < N * C; ++pl) {
    const int64_t c = pl % C;
    kmean[pl] = meanp[pl];
    krstd[pl] = rstdp[pl];
    kw[pl] = w ? w[c] : A(1);
    kb[pl] = b ? b[c] : A(0);
  }
  auto coef = [&](int64_t n) {
    const int64_t o = n * C;
    return ClCoef<A>{&kmean[o], &krstd[o], &kw[o], &kb[o], &km1[o], &km2[o]};
  };
  const int64_t cp = cl_chunk_pixels(C), nchunk = (hw + cp - 1) / cp;
  std::vector<double> p1(N * nchunk * C, 0.0), p2(N * nchunk * C, 0.0);
  at::parallel_for(0, N * nchunk, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> scratch(2 * C);
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t n = t / nchunk, p0 = (t % nchunk) * cp;
      L.cl_bwd_sums(xp + (n * hw + p0) * C, gp + (n * hw + p0) * C, std::min(cp, hw - p0), C, coef(n), slope,
                    scratch.data(), &p1[t * C], &p2[t * C]);
    }
  });
  merge_dz_partials(p1.data(), p2.data(), N, nchunk, C, hw, sdz, sdzx, km1.data(), km2.data());
  if (!dp) return;
  at::parallel_for(0, N * hw, cp, [&](int64_t lo, int64_t hi) {
    for_image_ranges(lo, hi, hw, [&](int64_t n, int64_t p0, int64_t p1) {
      L.cl_bwd_dx(xp + (n * hw + p0) * C, gp + (n * hw + p0) * C, dp + (n * hw + p0) * C, p1 - p0, C, coef(n),
                  slope);
    });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_cpu(const at::Tensor& x,
                                                                     const std::optional<at::Tensor>& weight,
                                                                     const std::optional<at::Tensor>& bias,
                                                                     double eps, double negative_slope) {
  check_forward(x, weight, bias, eps);
  TORCH_CHECK(x.device().is_cpu(), "instance_norm_act: x must be a CPU tensor, got ", x.device().str());
  const auto fmt = memory_format_of(x);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  if (forward_outputs(x, eps, fmt, out)) return out;
  // Named references, not a structured binding: the kernels' lambdas capture them, which C++17 forbids.
  at::Tensor &y = std::get<0>(out), &mean = std::get<1>(out), &rstd = std::get<2>(out);
  const auto acc = acc_type_of(x);
  const auto xc = x.contiguous(fmt);
  const auto w = affine_as(weight, acc), b = affine_as(bias, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_cpu", [&] {
    using A = acc_t<scalar_t>;
    const A* wp = w.defined() ? w.const_data_ptr<A>() : nullptr;
    const A* bp = b.defined() ? b.const_data_ptr<A>() : nullptr;
    if (fmt == at::MemoryFormat::ChannelsLast)
      forward_cl<scalar_t>(xc, y, wp, bp, eps, static_cast<A>(negative_slope), mean.mutable_data_ptr<A>(),
                           rstd.mutable_data_ptr<A>());
    else
      forward_nchw<scalar_t>(xc, y, wp, bp, eps, static_cast<A>(negative_slope),
                             mean.mutable_data_ptr<A>(), rstd.mutable_data_ptr<A>());
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double negative_slope,
    std::array<bool, 3> output_mask) {
  check_backward(grad_y, x, mean, rstd, weight, bias);
  TORCH_CHECK(x.device().is_cpu(), "instance_norm_act_backward: x must be a CPU tensor, got ", x.device().str());
  const int64_t N = x.size(0), C = x.size(1), hw = x.size(2) * x.size(3);
  const auto acc = acc_type_of(x);
  const bool has_w = weight.has_value() && weight->defined(), has_b = bias.has_value() && bias->defined();
  const bool need_w = has_w && output_mask[1], need_b = has_b && output_mask[2];
  const auto fmt = memory_format_of(x);

  // Undefined-free outputs (see the schema): a grad_x that is not needed is zeros, not garbage.
  at::Tensor gx = at::empty(x.sizes(), x.options(), fmt);
  if (!output_mask[0]) gx.zero_();
  auto sdz = at::zeros({N, C}, x.options().dtype(at::kDouble));
  auto sdzx = at::zeros({N, C}, x.options().dtype(at::kDouble));
  if (N * C * hw > 0 && (output_mask[0] || need_w || need_b)) {
    const auto xc = x.contiguous(fmt);
    const auto gyc = grad_y.to(x.scalar_type()).contiguous(fmt);
    const auto meanc = mean.contiguous(), rstdc = rstd.contiguous();
    const auto w = affine_as(weight, acc), b = affine_as(bias, acc);
    const auto run = [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const A* wp = w.defined() ? w.const_data_ptr<A>() : nullptr;
      const A* bp = b.defined() ? b.const_data_ptr<A>() : nullptr;
      auto* gxp = output_mask[0] ? &gx : nullptr;
      const auto s = static_cast<A>(negative_slope);
      const A* mp = meanc.const_data_ptr<A>();
      const A* rp = rstdc.const_data_ptr<A>();
      double* d1 = sdz.mutable_data_ptr<double>();
      double* d2 = sdzx.mutable_data_ptr<double>();
      if (fmt == at::MemoryFormat::ChannelsLast)
        backward_cl<scalar_t>(xc, gyc, gxp, mp, rp, wp, bp, s, d1, d2);
      else
        backward_nchw<scalar_t>(xc, gyc, gxp, mp, rp, wp, bp, s, d1, d2);
    };
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_backward",
                                    [&] { run(scalar_t{}); });
  }
  // dw = sum_n sum(dz * xhat), db = sum_n sum(dz), in double, then cast to the parameter's dtype.
  auto sum_over_n = [&](const at::Tensor& s, at::ScalarType dt) {
    auto out = at::empty({C}, x.options().dtype(at::kDouble));
    const double* sp = s.const_data_ptr<double>();
    double* op = out.mutable_data_ptr<double>();
    for (int64_t c = 0; c < C; ++c) {
      double t = 0;
      for (int64_t n = 0; n < N; ++n) t += sp[n * C + c];
      op[c] = t;
    }
    return out.to(dt);
  };
  at::Tensor gw = need_w ? sum_over_n(sdzx, weight->scalar_type()) : at::empty({0}, x.options());
  at::Tensor gb = need_b ? sum_over_n(sdz, bias->scalar_type()) : at::empty({0}, x.options());
  return {gx, gw, gb};
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CPU, m) {
  m.impl("instance_norm_act", &instance_norm_act_cpu);
  m.impl("instance_norm_act_backward", &instance_norm_act_backward_cpu);
}

}  // namespace pix2pixhd_fast
