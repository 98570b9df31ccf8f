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

// Independent accumulators of the NCHW backward sums: a single running sum is one dependent add per element (the
// compiler may not reorder float adds); lanes let the loop vectorize.
constexpr int kLanes = 16;

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
        A mb, m2;
        block_moments(p + b0, len, &mb, &m2);
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

// Folded gradient of pixels [w0, w1) of a source row (e values per pixel: 1 NCHW, C channels-last) into
// g[(w - w0) * e + j]: the sum of gy over the padded rows that read the source row (`rows`, `nr` of them, from
// readers()) at padded column w + p and, for w in 1..p and W-1-p..W-2, at the mirrored columns too (see
// reflect_pad.h). `gy_img` points at the padded plane (NCHW) or image (channels-last). Done a segment at a time so
// that g stays in L1 between this fold and the loops that read it.
template <typename T>
inline void fold_segment(const T* gy_img, const int64_t* rows, int nr, int64_t W, int64_t p, int64_t e, int64_t w0,
                         int64_t w1, acc_t<T>* __restrict__ g) {
  const int64_t len = (W + 2 * p) * e, n = (w1 - w0) * e;
  const T* __restrict__ r0 = gy_img + rows[0] * len + (w0 + p) * e;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) g[i] = ld(r0[i]);
  for (int k = 1; k < nr; ++k) {
    const T* __restrict__ rk = gy_img + rows[k] * len + (w0 + p) * e;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) g[i] += ld(rk[i]);
  }
  const auto add_column = [&](int64_t w, int64_t col) {
    for (int k = 0; k < nr; ++k) {
      const T* __restrict__ src = gy_img + rows[k] * len + col * e;
      acc_t<T>* __restrict__ dst = g + (w - w0) * e;
#pragma omp simd
      for (int64_t j = 0; j < e; ++j) dst[j] += ld(src[j]);
    }
  };
  for (int64_t w = std::max<int64_t>(w0, 1); w < std::min(w1, p + 1); ++w) add_column(w, p - w);
  for (int64_t w = std::max(w0, W - 1 - p); p > 0 && w < std::min(w1, W - 1); ++w) add_column(w, 2 * (W - 1) - w + p);
}

// NCHW backward, plane by plane: pass 1 folds each row (into a row buffer in L1) and reduces sum(dz) and
// sum(dz * xhat); pass 2 folds each row again and writes the folded gradient and dx. Refolding reads the plane's
// gy a second time while it is still in L2; keeping the folded plane instead (a float buffer twice the size of a
// bf16 plane) pushed x and gy out of L2 and measured slower.
template <typename T>
void backward_nchw(const T* x, const T* gy, T* gx, T* gres, int64_t N, int64_t C, int64_t H, int64_t W, int64_t p,
                   BwdCoef<acc_t<T>> k, acc_t<T> slope, double* sdz, double* sdzx) {
  using A = acc_t<T>;
  const int64_t hw = H * W, Ho = H + 2 * p, Wo = W + 2 * p;
  at::parallel_for(0, N * C, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> g(W);
    for (int64_t pl = lo; pl < hi; ++pl) {
      const int64_t c = pl % C;
      const A mean = k.mean[pl], rstd = k.rstd[pl], w = k.w ? k.w[c] : A(1), beta = k.b ? k.b[c] : A(0);
      const T* px = x + pl * hw;
      const T* gy_plane = gy + pl * Ho * Wo;
      const auto fold = [&](int64_t h) {
        int64_t rows[3];
        const int nr = readers(h, H, p, rows);
        fold_segment(gy_plane, rows, nr, W, p, 1, 0, W, g.data());
      };
      double d1 = 0, d2 = 0;
      for (int64_t h = 0; h < H; ++h) {
        fold(h);
        const T* __restrict__ xr = px + h * W;
        const A* __restrict__ gq = g.data();
        // Independent lanes (kLanes): GCC keeps an `omp simd reduction` of two sums scalar here.
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
      if (!gx && !gres) continue;
      const A m1 = static_cast<A>(d1 / hw), m2 = static_cast<A>(d2 / hw), gs = rstd * w;
      for (int64_t h = 0; h < H; ++h) {
        fold(h);
        const A* __restrict__ gp = g.data();
        if (gres) {
          T* __restrict__ out = gres + pl * hw + h * W;
#pragma omp simd
          for (int64_t i = 0; i < W; ++i) out[i] = st<T>(gp[i]);
        }
        if (!gx) continue;
        const T* __restrict__ xr = px + h * W;
        T* __restrict__ out = gx + pl * hw + h * W;
#pragma omp simd
        for (int64_t i = 0; i < W; ++i) {
          const A xh = (ld(xr[i]) - mean) * rstd;
          const A dz = leaky_grad(xh * w + beta, gp[i], slope);
          out[i] = st<T>(gs * (dz - m1 - xh * m2));
        }
      }
    }
  });
}

// Channels-last backward, row by row: pass 1 reduces per-row partial sums per channel, pass 2 writes dx and the
// folded gradient. Each row is folded in segments of pixels whose float gradient fits in L1 (a whole folded row
// of 512 pixels x 64 channels is 128 KB, which spilled to L2 and back in both passes).
template <typename T>
void backward_cl(const T* x, const T* gy, T* gx, T* gres, int64_t N, int64_t C, int64_t H, int64_t W, int64_t p,
                 BwdCoef<acc_t<T>> k, acc_t<T> slope, double* sdz, double* sdzx) {
  using A = acc_t<T>;
  const int64_t Ho = H + 2 * p, Wo = W + 2 * p, hw = H * W;
  const int64_t grain = std::max<int64_t>(1, 16384 / (W * C));
  const int64_t seg = std::max<int64_t>(kPixelUnroll, 2048 / C);  // pixels per folded segment (8 KB of fp32)
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
    std::vector<A> g(seg * C), s1(C), s2(C);
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / H, h = r % H, o = n * C;
      int64_t rows[3];
      const int nr = readers(h, H, p, rows);
      std::fill(s1.begin(), s1.end(), A(0));
      std::fill(s2.begin(), s2.end(), A(0));
      A* __restrict__ a1 = s1.data();
      A* __restrict__ a2 = s2.data();
      const A* __restrict__ mean = &kmean[o];
      const A* __restrict__ rstd = &krstd[o];
      const A* __restrict__ wt = &kw[o];
      const A* __restrict__ bt = &kb[o];
      for (int64_t w0 = 0; w0 < W; w0 += seg) {
        const int64_t w1 = std::min(W, w0 + seg), len = w1 - w0;
        fold_segment(gy + n * Ho * Wo * C, rows, nr, W, p, C, w0, w1, g.data());
        const T* __restrict__ px = x + (r * W + w0) * C;
        const A* __restrict__ gp = g.data();
        cl_dz_sums(px, gp, len, C, mean, rstd, wt, bt, slope, a1, a2);
      }
      for (int64_t c = 0; c < C; ++c) {
        p1[r * C + c] = s1[c];
        p2[r * C + c] = s2[c];
      }
    }
  });
  merge_dz_partials(p1.data(), p2.data(), N, H, C, hw, sdz, sdzx, km1.data(), km2.data());
  if (!gx && !gres) return;
  // Pass 2: fold again, write dx and the folded gradient.
  at::parallel_for(0, N * H, grain, [&](int64_t lo, int64_t hi) {
    std::vector<A> g(seg * C);
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / H, h = r % H, o = n * C;
      int64_t rows[3];
      const int nr = readers(h, H, p, rows);
      const A* __restrict__ mean = &kmean[o];
      const A* __restrict__ rstd = &krstd[o];
      const A* __restrict__ wt = &kw[o];
      const A* __restrict__ bt = &kb[o];
      const A* __restrict__ u1 = &km1[o];
      const A* __restrict__ u2 = &km2[o];
      for (int64_t w0 = 0; w0 < W; w0 += seg) {
        const int64_t w1 = std::min(W, w0 + seg), n_el = (w1 - w0) * C;
        fold_segment(gy + n * Ho * Wo * C, rows, nr, W, p, C, w0, w1, g.data());
        const A* __restrict__ gp = g.data();
        if (gres) {
          T* __restrict__ out = gres + (r * W + w0) * C;
#pragma omp simd
          for (int64_t i = 0; i < n_el; ++i) out[i] = st<T>(gp[i]);
        }
        if (!gx) continue;
        const T* __restrict__ px = x + (r * W + w0) * C;
        T* __restrict__ pd = gx + (r * W + w0) * C;
        for (int64_t q = 0; q < w1 - w0; ++q)
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const A xh = (ld(px[q * C + c]) - mean[c]) * rstd[c];
            const A dz = leaky_grad(xh * wt[c] + bt[c], gp[q * C + c], slope);
            pd[q * C + c] = st<T>(rstd[c] * wt[c] * (dz - u1[c] - xh * u2[c]));
          }
      }
    }
  });
}
