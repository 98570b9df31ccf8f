// Fused instance norm + affine + LeakyReLU + residual add + ReflectionPad2d (forward and backward): CPU kernels.
//
// Forward: statistics of x per (n,c) plane, then one pass that normalizes each source row once, adds the
// residual (read through its strides: typically the interior view of the previous block's padded output) and
// writes the row to every padded row that reflects it (1 to 3), borders included. No pad kernel, no copy.
//
// Backward: the padded gradient's reflected border is folded back onto the interior row by row (a row of the
// folded gradient is formed in a small buffer from the 1-3 padded rows that read it) in the same pass that
// reduces sum(dz), sum(dz * xhat); the dx pass folds again (NCHW: from the plane buffer) and writes the folded
// gradient as grad_residual. NCHW works plane by plane; channels-last row by row with per-channel partials.
//
// Statistics: exact two-pass within blocks that sit in L1, blocks merged with Chan's formula in double, so a
// large mean offset costs no precision (as instance_norm_act).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/cpu_elem.h"
#include "common/cpu_norm_loops.h"
#include "common/instance_norm_act_pad_host.h"
#include "common/op_utils.h"
#include "common/reflect_pad.h"

namespace pix2pixhd_fast {
namespace {

using namespace pad_host;
using p2phd::pad::readers;
using p2phd::pad::reflect;

// Accumulation type: float for fp32/fp16/bf16, double for fp64.
template <typename T>
using acc_t = typename Elem<T>::acc;

template <typename T>
inline acc_t<T> ld(T v) {
  return Elem<T>::load(v);
}

template <typename T>
inline T st(acc_t<T> v) {
  return Elem<T>::store(v);
}

constexpr int64_t kBlock = 4096;  // elements per two-pass block (16 KB fp32: stays in L1)

// A residual read through its strides (null when absent).
template <typename T>
struct Residual {
  const T* p = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
};

// Per-plane forward coefficients: y = act((x - mean) * a + beta).
template <typename A>
struct Coef {
  std::vector<A> mean, a, beta;
};

// Backward coefficients per plane, in the accumulation type.
template <typename A>
struct BwdCoef {
  const A* mean;
  const A* rstd;
  const A* w;  // [C] or null
  const A* b;  // [C] or null
};

// The loops, once per instruction set (see instance_norm_act_pad_loops.h).
namespace isa_base {
#include "instance_norm_act_pad_loops.h"  // NOLINT(build/include)
}  // namespace isa_base
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define P2PHD_PAD_X86 1
namespace isa_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include "instance_norm_act_pad_loops.h"  // NOLINT(build/include)
#pragma GCC pop_options
}  // namespace isa_avx2
namespace isa_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#include "instance_norm_act_pad_loops.h"  // NOLINT(build/include)
#pragma GCC pop_options
}  // namespace isa_avx512
#endif

template <typename T>
struct PadLoops {
  decltype(&isa_base::stats_nchw<T>) stats_nchw;
  decltype(&isa_base::stats_cl<T>) stats_cl;
  decltype(&isa_base::normalize_pad<T>) normalize_pad;
  decltype(&isa_base::backward_nchw<T>) backward_nchw;
  decltype(&isa_base::backward_cl<T>) backward_cl;
};

#define P2PHD_PAD_LOOPS(NS) \
  PadLoops<T> { &NS::stats_nchw<T>, &NS::stats_cl<T>, &NS::normalize_pad<T>, &NS::backward_nchw<T>, &NS::backward_cl<T> }

template <typename T>
const PadLoops<T>& pad_loops() {
  static const PadLoops<T> table = [] {
    switch (cpu_isa()) {
#ifdef P2PHD_PAD_X86
      case CpuIsa::kAvx512:
        return P2PHD_PAD_LOOPS(isa_avx512);
      case CpuIsa::kAvx2:
        return P2PHD_PAD_LOOPS(isa_avx2);
#endif
      default:
        return P2PHD_PAD_LOOPS(isa_base);
    }
  }();
  return table;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_pad_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, double eps, double negative_slope, int64_t pad) {
  check_forward(x, weight, bias, residual, eps, pad);
  TORCH_CHECK(x.device().is_cpu(), "instance_norm_act_pad: x must be a CPU tensor, got ", x.device().str());
  auto out = forward_outputs(x, pad, eps);
  if (out.done) return {out.y, out.mean, out.rstd};
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto fmt = memory_format_of(x);
  const auto acc = acc_type_of(x);
  const auto xc = x.contiguous(fmt);
  const auto w = norm_host::affine_as(weight, acc), b = norm_host::affine_as(bias, acc);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor &yt = out.y, &mt = out.mean, &rt = out.rstd;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_pad_cpu", [&] {
    using A = acc_t<scalar_t>;
    const A* wp = w.defined() ? w.const_data_ptr<A>() : nullptr;
    const A* bp = b.defined() ? b.const_data_ptr<A>() : nullptr;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    A* mp = mt.mutable_data_ptr<A>();
    A* rp = rt.mutable_data_ptr<A>();
    const auto& L = pad_loops<scalar_t>();
    const auto k = cl ? L.stats_cl(xp, N, C, H * W, wp, bp, eps, mp, rp)
                      : L.stats_nchw(xp, N, C, H * W, wp, bp, eps, mp, rp);
    Residual<scalar_t> res;
    if (given(residual)) {
      res.p = residual->const_data_ptr<scalar_t>();
      res.s0 = residual->stride(0);
      res.s1 = residual->stride(1);
      res.s2 = residual->stride(2);
      res.s3 = residual->stride(3);
    }
    L.normalize_pad(xp, yt.mutable_data_ptr<scalar_t>(), N, C, H, W, pad, cl, k,
                            static_cast<A>(negative_slope), res);
  });
  return {out.y, out.mean, out.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> instance_norm_act_pad_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double negative_slope,
    int64_t pad, std::array<bool, 4> output_mask) {
  check_backward(grad_y, x, mean, rstd, weight, bias, pad);
  TORCH_CHECK(x.device().is_cpu(), "instance_norm_act_pad_backward: x must be a CPU tensor, got ",
              x.device().str());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto acc = acc_type_of(x);
  const auto fmt = memory_format_of(x);
  auto out = backward_outputs(x, weight, bias, output_mask);
  at::Tensor &gx = out.gx, &gres = out.gres;
  const bool need_w = out.need_w, need_b = out.need_b, need_r = out.need_r;
  auto sdz = at::zeros({N, C}, x.options().dtype(at::kDouble));
  auto sdzx = at::zeros({N, C}, x.options().dtype(at::kDouble));
  if (N * C * H * W > 0 && out.any()) {
    const auto xc = x.contiguous(fmt);
    const auto gyc = grad_y.to(x.scalar_type()).contiguous(fmt);
    const auto meanc = mean.contiguous(), rstdc = rstd.contiguous();
    const auto w = norm_host::affine_as(weight, acc), b = norm_host::affine_as(bias, acc);
    const bool cl = fmt == at::MemoryFormat::ChannelsLast;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_pad_backward_cpu",
                                    [&] {
                                      using A = acc_t<scalar_t>;
                                      const BwdCoef<A> k{meanc.const_data_ptr<A>(), rstdc.const_data_ptr<A>(),
                                                         w.defined() ? w.const_data_ptr<A>() : nullptr,
                                                         b.defined() ? b.const_data_ptr<A>() : nullptr};
                                      scalar_t* gxp = out.need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr;
                                      scalar_t* grp = need_r ? gres.mutable_data_ptr<scalar_t>() : nullptr;
                                      const auto fn = cl ? pad_loops<scalar_t>().backward_cl
                                                         : pad_loops<scalar_t>().backward_nchw;
                                      fn(xc.const_data_ptr<scalar_t>(), gyc.const_data_ptr<scalar_t>(), gxp, grp, N,
                                         C, H, W, pad, k, static_cast<A>(negative_slope),
                                         sdz.mutable_data_ptr<double>(), sdzx.mutable_data_ptr<double>());
                                    });
  } else if (need_r) {
    gres.zero_();
  }
  // dw = sum_n sum(dz * xhat), db = sum_n sum(dz), in double, then cast to the parameter's dtype.
  at::Tensor gw = need_w ? sdzx.sum(0).to(weight->scalar_type()) : at::empty({0}, x.options());
  at::Tensor gb = need_b ? sdz.sum(0).to(bias->scalar_type()) : at::empty({0}, x.options());
  return {gx, gw, gb, gres};
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CPU, m) {
  m.impl("instance_norm_act_pad", &instance_norm_act_pad_cpu);
  m.impl("instance_norm_act_pad_backward", &instance_norm_act_pad_backward_cpu);
}

}  // namespace pix2pixhd_fast
