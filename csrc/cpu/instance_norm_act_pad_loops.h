// Loop bodies of the fused instance norm + activation + residual + reflection pad CPU kernels, without include
// guard: instance_norm_act_pad.cpp includes this file once per instruction set, each time inside its own namespace
// under `#pragma GCC target`, and picks one at run time (the package is built for baseline x86-64, where these
// loops would stay SSE2 and scalar: about 10x slower on an AVX-512 machine). Types and helpers that need no
// particular instruction set (Coef, Residual, BwdCoef, ld/st; Moments and the block moments in
// common/cpu_norm_loops.h) are defined before the includes.
// Branch-free (min/max, a 0/1 mask): a data-dependent branch mispredicts on half of the pixels and keeps the
// loops from vectorizing.
template <typename A>
inline A leaky(A z, A slope) {
  return std::max(z, A(0)) + std::min(z, A(0)) * slope;
}

// The activation's derivative applied to g at pre-activation z: g for z > 0, g * slope otherwise.
template <typename A>
inline A leaky_grad(A z, A g, A slope) {
  return z > A(0) ? g : g * slope;  // a select: vectorizes to a blend
}

// Sum of f(0..n) over kLanes independent accumulators: a single running sum is one dependent add per element
// (the compiler may not reorder float adds), lanes let the loop vectorize.
constexpr int kLanes = 16;

template <typename F>
inline auto lane_sum(int64_t n, const F& f) -> decltype(f(int64_t{0})) {
  using A = decltype(f(int64_t{0}));
  A s[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) s[j] += f(i + j);
  A t = 0;
  for (; i < n; ++i) t += f(i);
  for (int j = 0; j < kLanes; ++j) t += s[j];
  return t;
}

template <typename T>
Coef<acc_t<T>> stats_nchw(const T* x, int64_t N, int64_t C, int64_t hw, const acc_t<T>* w, const acc_t<T>* b,
                          double eps, acc_t<T>* mean_out, acc_t<T>* rstd_out) {
  using A = acc_t<T>;
  const int64_t planes = N * C;
  Coef<A> k{std::vector<A>(planes), std::vector<A>(planes), std::vector<A>(planes)};
  at::parallel_for(0, planes, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t pl = lo; pl < hi; ++pl) {
      const T* p = x + pl * hw;
      Moments m;
      for (int64_t b0 = 0; b0 < hw; b0 += kBlock) {
        const int64_t len = std::min(kBlock, hw - b0);
        const T* q = p + b0;
        const A mb = lane_sum(len, [&](int64_t i) { return ld(q[i]); }) / static_cast<A>(len);
        const A m2 = lane_sum(len, [&](int64_t i) {
          const A d = ld(q[i]) - mb;
          return d * d;
        });
        m.merge(static_cast<double>(len), mb, m2);
      }
      const A r = rstd_of<A>(m.m2 / static_cast<double>(hw), eps);
      const int64_t c = pl % C;
      mean_out[pl] = k.mean[pl] = static_cast<A>(m.mean);
      rstd_out[pl] = r;
      k.a[pl] = r * (w ? w[c] : A(1));
      k.beta[pl] = b ? b[c] : A(0);
    }
  });
  return k;
}

// Channels-last statistics: per (image, pixel chunk) two-pass partials per channel, merged exactly in double.
template <typename T>
Coef<acc_t<T>> stats_cl(const T* x, int64_t N, int64_t C, int64_t hw, const acc_t<T>* w, const acc_t<T>* b,
                        double eps, acc_t<T>* mean_out, acc_t<T>* rstd_out) {
  using A = acc_t<T>;
  const int64_t cp = std::max<int64_t>(1, kBlock / C), nchunk = (hw + cp - 1) / cp;
  std::vector<double> pmean(N * nchunk * C), pm2(N * nchunk * C);
  at::parallel_for(0, N * nchunk, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> s(C), mb(C);
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t n = t / nchunk, p0 = (t % nchunk) * cp, len = std::min(cp, hw - p0);
      cl_block_moments(x + (n * hw + p0) * C, len, C, mb.data(), s.data());
      for (int64_t c = 0; c < C; ++c) {
        pmean[t * C + c] = mb[c];
        pm2[t * C + c] = s[c];
      }
    }
  });
  Coef<A> k{std::vector<A>(N * C), std::vector<A>(N * C), std::vector<A>(N * C)};
  at::parallel_for(0, N * C, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t pl = lo; pl < hi; ++pl) {
      const int64_t n = pl / C, c = pl % C;
      double s = 0;
      for (int64_t j = 0; j < nchunk; ++j) s += std::min(cp, hw - j * cp) * pmean[(n * nchunk + j) * C + c];
      const double mean = s / static_cast<double>(hw);
      double m2 = 0;
      for (int64_t j = 0; j < nchunk; ++j) {
        const double d = pmean[(n * nchunk + j) * C + c] - mean;
        m2 += pm2[(n * nchunk + j) * C + c] + std::min(cp, hw - j * cp) * d * d;
      }
      const A r = rstd_of<A>(m2 / static_cast<double>(hw), eps);
      mean_out[pl] = k.mean[pl] = static_cast<A>(mean);
      rstd_out[pl] = r;
      k.a[pl] = r * (w ? w[c] : A(1));
      k.beta[pl] = b ? b[c] : A(0);
    }
  });
  return k;
}

// Fills the reflected borders of padded row `dst` (Wo = W + 2p positions of `e` values each: e = 1 NCHW, C
// channels-last) whose interior [p, p + W) is already written.
template <typename T>
inline void reflect_row_borders(T* dst, int64_t W, int64_t p, int64_t e) {
  const T* row = dst + p * e;
  for (int64_t o = 0; o < p; ++o) {
    std::memcpy(dst + o * e, row + reflect(o - p, W) * e, sizeof(T) * e);
    const int64_t o2 = p + W + o;
    std::memcpy(dst + o2 * e, row + reflect(o2 - p, W) * e, sizeof(T) * e);
  }
}

// Normalizes each source row straight into the interior of the first padded row that reads it, fills that row's
// borders, and copies the finished padded row to the other rows that reflect it (only rows 1..p and H-1-p..H-2
// have such copies): each output element is written once, plus the border copies.
template <typename T>
void normalize_pad(const T* x, T* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t p, bool cl,
                   const Coef<acc_t<T>>& k, acc_t<T> slope, const Residual<T>& res) {
  using A = acc_t<T>;
  const int64_t Ho = H + 2 * p, Wo = W + 2 * p;
  const int64_t e = cl ? C : 1;  // values per pixel of a row
  const auto finish_row = [&](T* plane, const int64_t* rows, int cnt) {
    T* first = plane + rows[0] * Wo * e;
    reflect_row_borders(first, W, p, e);
    for (int i = 1; i < cnt; ++i) std::memcpy(plane + rows[i] * Wo * e, first, sizeof(T) * Wo * e);
  };
  if (!cl) {
    const int64_t grain = std::max<int64_t>(1, 16384 / W);
    at::parallel_for(0, N * C * H, grain, [&](int64_t lo, int64_t hi) {
      int64_t dst_rows[3];
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t pl = r / H, h = r % H, n = pl / C, c = pl % C;
        const int cnt = readers(h, H, p, dst_rows);
        T* plane = y + pl * Ho * Wo;
        T* __restrict__ out = plane + dst_rows[0] * Wo + p;
        const T* __restrict__ px = x + r * W;
        const A mean = k.mean[pl], a = k.a[pl], beta = k.beta[pl];
        const T* rr = res.p ? res.p + n * res.s0 + c * res.s1 + h * res.s2 : nullptr;
        if (rr && res.s3 == 1) {
#pragma omp simd
          for (int64_t w = 0; w < W; ++w) out[w] = st<T>(leaky((ld(px[w]) - mean) * a + beta, slope) + ld(rr[w]));
        } else if (rr) {
          for (int64_t w = 0; w < W; ++w)
            out[w] = st<T>(leaky((ld(px[w]) - mean) * a + beta, slope) + ld(rr[w * res.s3]));
        } else {
#pragma omp simd
          for (int64_t w = 0; w < W; ++w) out[w] = st<T>(leaky((ld(px[w]) - mean) * a + beta, slope));
        }
        finish_row(plane, dst_rows, cnt);
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / (W * C));
  at::parallel_for(0, N * H, grain, [&](int64_t lo, int64_t hi) {
    int64_t dst_rows[3];
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / H, h = r % H;
      const int cnt = readers(h, H, p, dst_rows);
      T* image = y + n * Ho * Wo * C;
      T* row = image + (dst_rows[0] * Wo + p) * C;
      const T* px = x + r * W * C;
      const A* __restrict__ mean = &k.mean[n * C];
      const A* __restrict__ a = &k.a[n * C];
      const A* __restrict__ beta = &k.beta[n * C];
      for (int64_t w = 0; w < W; ++w) {
        T* __restrict__ o = row + w * C;
        const T* __restrict__ q = px + w * C;
        const T* __restrict__ rp = res.p ? res.p + n * res.s0 + h * res.s2 + w * res.s3 : nullptr;
        if (rp && res.s1 == 1) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c)
            o[c] = st<T>(leaky((ld(q[c]) - mean[c]) * a[c] + beta[c], slope) + ld(rp[c]));
        } else if (rp) {
          for (int64_t c = 0; c < C; ++c)
            o[c] = st<T>(leaky((ld(q[c]) - mean[c]) * a[c] + beta[c], slope) + ld(rp[c * res.s1]));
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = st<T>(leaky((ld(q[c]) - mean[c]) * a[c] + beta[c], slope));
        }
      }
      finish_row(image, dst_rows, cnt);
    }
  });
}

// Folded gradient of source row h (e values per pixel): g[w*e + j] = sum over the padded rows and columns that
// read (h, w) of gy. `gy_img` points at the padded plane (NCHW) or image (channels-last); `tmp` holds Wo*e.
template <typename T>
inline void fold_row(const T* gy_img, int64_t h, int64_t H, int64_t W, int64_t p, int64_t e, acc_t<T>* __restrict__ tmp,
                     acc_t<T>* __restrict__ g) {
  const int64_t len = (W + 2 * p) * e;
  int64_t rows[3];
  const int nr = readers(h, H, p, rows);
  const T* __restrict__ r0 = gy_img + rows[0] * len;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) tmp[i] = ld(r0[i]);
  for (int k = 1; k < nr; ++k) {
    const T* __restrict__ rk = gy_img + rows[k] * len;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) tmp[i] += ld(rk[i]);
  }
  // Columns: the interior, then the mirrors (p reversed into columns 1..p, p into W-1-p..W-2; see reflect_pad.h).
#pragma omp simd
  for (int64_t i = 0; i < W * e; ++i) g[i] = tmp[p * e + i];
  for (int64_t s = 1; s <= p; ++s)
    for (int64_t j = 0; j < e; ++j) g[s * e + j] += tmp[(p - s) * e + j];
  for (int64_t s = W - 1 - p; p > 0 && s <= W - 2; ++s)
    for (int64_t j = 0; j < e; ++j) g[s * e + j] += tmp[(2 * (W - 1) - s + p) * e + j];
}

template <typename T>
void backward_nchw(const T* x, const T* gy, T* gx, T* gres, int64_t N, int64_t C, int64_t H, int64_t W, int64_t p,
                   BwdCoef<acc_t<T>> k, acc_t<T> slope, double* sdz, double* sdzx) {
  using A = acc_t<T>;
  const int64_t hw = H * W, Ho = H + 2 * p, Wo = W + 2 * p;
  at::parallel_for(0, N * C, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> g(hw), tmp(Wo);
    for (int64_t pl = lo; pl < hi; ++pl) {
      const int64_t c = pl % C;
      const A mean = k.mean[pl], rstd = k.rstd[pl], w = k.w ? k.w[c] : A(1), beta = k.b ? k.b[c] : A(0);
      const T* px = x + pl * hw;
      double d1 = 0, d2 = 0;
      for (int64_t h = 0; h < H; ++h) {
        A* gr = g.data() + h * W;
        fold_row(gy + pl * Ho * Wo, h, H, W, p, 1, tmp.data(), gr);
        const T* __restrict__ xr = px + h * W;
        const A* __restrict__ gq = gr;
        // Independent lanes, as lane_sum: GCC keeps an `omp simd reduction` of two sums scalar here.
        A s1[kLanes] = {}, s2[kLanes] = {};
        int64_t i = 0;
        for (; i + kLanes <= W; i += kLanes)
          for (int j = 0; j < kLanes; ++j) {
            const A xh = (ld(xr[i + j]) - mean) * rstd;
            const A dz = leaky_grad(xh * w + beta, gq[i + j], slope);
            s1[j] += dz;
            s2[j] += dz * xh;
          }
        A t1 = 0, t2 = 0;
        for (; i < W; ++i) {
          const A xh = (ld(xr[i]) - mean) * rstd;
          const A dz = leaky_grad(xh * w + beta, gq[i], slope);
          t1 += dz;
          t2 += dz * xh;
        }
        for (int j = 0; j < kLanes; ++j) {
          t1 += s1[j];
          t2 += s2[j];
        }
        d1 += t1;
        d2 += t2;
      }
      sdz[pl] = d1;
      sdzx[pl] = d2;
      const A* __restrict__ gp = g.data();
      if (gres) {
        T* __restrict__ out = gres + pl * hw;
#pragma omp simd
        for (int64_t i = 0; i < hw; ++i) out[i] = st<T>(gp[i]);
      }
      if (!gx) continue;
      const A m1 = static_cast<A>(d1 / hw), m2 = static_cast<A>(d2 / hw), gs = rstd * w;
      T* __restrict__ out = gx + pl * hw;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) {
        const A xh = (ld(px[i]) - mean) * rstd;
        const A dz = leaky_grad(xh * w + beta, gp[i], slope);
        out[i] = st<T>(gs * (dz - m1 - xh * m2));
      }
    }
  });
}

template <typename T>
void backward_cl(const T* x, const T* gy, T* gx, T* gres, int64_t N, int64_t C, int64_t H, int64_t W, int64_t p,
                 BwdCoef<acc_t<T>> k, acc_t<T> slope, double* sdz, double* sdzx) {
  using A = acc_t<T>;
  const int64_t Ho = H + 2 * p, Wo = W + 2 * p, hw = H * W;
  const int64_t grain = std::max<int64_t>(1, 16384 / (W * C));
  std::vector<A> kmean(N * C), krstd(N * C), kw(N * C), kb(N * C), km1(N * C), km2(N * C);
  for (int64_t pl = 0; pl < N * C; ++pl) {
    const int64_t c = pl % C;
    kmean[pl] = k.mean[pl];
    krstd[pl] = k.rstd[pl];
    kw[pl] = k.w ? k.w[c] : A(1);
    kb[pl] = k.b ? k.b[c] : A(0);
  }
  // Pass 1: per-row partial sums per channel.
  std::vector<double> p1(N * H * C), p2(N * H * C);
  at::parallel_for(0, N * H, grain, [&](int64_t lo, int64_t hi) {
    std::vector<A> g(W * C), tmp(Wo * C), s1(C), s2(C);
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / H, h = r % H, o = n * C;
      fold_row(gy + n * Ho * Wo * C, h, H, W, p, C, tmp.data(), g.data());
      std::fill(s1.begin(), s1.end(), A(0));
      std::fill(s2.begin(), s2.end(), A(0));
      const T* px = x + r * W * C;
      A* __restrict__ a1 = s1.data();
      A* __restrict__ a2 = s2.data();
      const A* __restrict__ gp = g.data();
      const A* __restrict__ mean = &kmean[o];
      const A* __restrict__ rstd = &krstd[o];
      const A* __restrict__ wt = &kw[o];
      const A* __restrict__ bt = &kb[o];
      // kPixelUnroll pixels per accumulator update (see cpu_norm_loops.h).
      int64_t w = 0;
      for (; w + kPixelUnroll <= W; w += kPixelUnroll)
#pragma GCC ivdep
        for (int64_t c = 0; c < C; ++c) {
          A t1 = 0, t2 = 0;
          for (int u = 0; u < kPixelUnroll; ++u) {
            const A xh = (ld(px[(w + u) * C + c]) - mean[c]) * rstd[c];
            const A dz = leaky_grad(xh * wt[c] + bt[c], gp[(w + u) * C + c], slope);
            t1 += dz;
            t2 += dz * xh;
          }
          a1[c] += t1;
          a2[c] += t2;
        }
      for (; w < W; ++w)
#pragma GCC ivdep
        for (int64_t c = 0; c < C; ++c) {
          const A xh = (ld(px[w * C + c]) - mean[c]) * rstd[c];
          const A dz = leaky_grad(xh * wt[c] + bt[c], gp[w * C + c], slope);
          a1[c] += dz;
          a2[c] += dz * xh;
        }
      for (int64_t c = 0; c < C; ++c) {
        p1[r * C + c] = s1[c];
        p2[r * C + c] = s2[c];
      }
    }
  });
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double a1 = 0, a2 = 0;
      for (int64_t h = 0; h < H; ++h) {
        a1 += p1[(n * H + h) * C + c];
        a2 += p2[(n * H + h) * C + c];
      }
      sdz[n * C + c] = a1;
      sdzx[n * C + c] = a2;
      km1[n * C + c] = static_cast<A>(a1 / hw);
      km2[n * C + c] = static_cast<A>(a2 / hw);
    }
  if (!gx && !gres) return;
  // Pass 2: fold again, write dx and the folded gradient.
  at::parallel_for(0, N * H, grain, [&](int64_t lo, int64_t hi) {
    std::vector<A> g(W * C), tmp(Wo * C);
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / H, h = r % H, o = n * C;
      fold_row(gy + n * Ho * Wo * C, h, H, W, p, C, tmp.data(), g.data());
      const A* __restrict__ gp = g.data();
      if (gres) {
        T* __restrict__ out = gres + r * W * C;
#pragma omp simd
        for (int64_t i = 0; i < W * C; ++i) out[i] = st<T>(gp[i]);
      }
      if (!gx) continue;
      const T* __restrict__ px = x + r * W * C;
      T* __restrict__ pd = gx + r * W * C;
      for (int64_t w = 0; w < W; ++w)
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const A xh = (ld(px[w * C + c]) - kmean[o + c]) * krstd[o + c];
          const A gv = gp[w * C + c];
          const A dz = leaky_grad(xh * kw[o + c] + kb[o + c], gv, slope);
          pd[w * C + c] = st<T>(krstd[o + c] * kw[o + c] * (dz - km1[o + c] - xh * km2[o + c]));
        }
    }
  });
}
