// Fused instance norm + affine + LeakyReLU + residual add + ReflectionPad2d (forward and backward): CUDA launchers.
//
// Forward: instance_norm_act's statistics and merge kernels (mean, rstd) -> pad_normalize (writes the padded
// output, residual added). Backward: pad_bwd_reduce (folds the padded gradient on the fly; partials of sum(dz) and
// sum(dz * xhat)) -> instance_norm_act's merge kernel (per-plane means, dw, db) -> pad_bwd_dx (folds again, writes
// dx and the folded gradient as grad_residual). All on the current stream, no host sync, workspace from the
// caching allocator. Device code: common/instance_norm_act_pad.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/instance_norm_act.cuh"
#include "common/instance_norm_act_pad.cuh"
#include "common/instance_norm_act_pad_host.h"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

using namespace pad_host;

using p2phd::norm::AccOf;
using p2phd::norm::Affine;
using p2phd::norm::kThreads;
using p2phd::norm::kWarps;
using p2phd::norm::Moments;
using p2phd::norm::Pair;
using p2phd::norm_pad::Geom;
using p2phd::norm_pad::Residual;

template <typename T>
struct DevType {
  using type = T;
};
template <>
struct DevType<at::Half> {
  using type = __half;
};
template <>
struct DevType<at::BFloat16> {
  using type = __nv_bfloat16;
};

constexpr int kStatItems = 8;  // loads in flight per thread in the statistics kernels (as instance_norm_act)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

template <typename T>
constexpr int vec_width() {
  return std::is_same_v<T, double> ? 1 : static_cast<int>(16 / sizeof(T));
}

// Whether 16-byte vectors of `len`-element rows apply: every pointer aligned and rows made of whole vectors.
template <typename T>
bool vectors_fit(std::initializer_list<const void*> ptrs, int64_t len) {
  constexpr int V = vec_width<T>();
  if (V == 1 || len % V != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

// Channels-last 2-D block: TX threads along the channel vectors, TY along pixels.
struct ClBlock {
  int tx, ty;
  int64_t gy;
};

ClBlock cl_block(int64_t cvec) {
  const int tx = static_cast<int>(std::min<int64_t>(cvec, kThreads));
  return {tx, kThreads / tx, ceil_div(cvec, tx)};
}

// Statistics of x (contiguous in its format) into mean/rstd, with instance_norm_act's kernels.
template <typename T, int V>
void stats_launch(const T* x, int64_t N, int64_t C, int64_t hw, bool cl, typename AccOf<T>::type* mean,
                  typename AccOf<T>::type* rstd, double eps, const at::TensorOptions& acc_opts, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  using namespace p2phd::norm;
  const int64_t planes = N * C, merge_blocks = ceil_div(planes, kWarps), sms = sm_count();
  if (!cl) {
    const int64_t round = int64_t(kThreads) * V * kStatItems, rpp = ceil_div(hw, round);
    // ~2 waves at full occupancy; fewer partials beyond.
    const int64_t rpb = std::max<int64_t>(1, std::min(rpp, planes * rpp / (sms * (2048 / kThreads) * 2)));
    const int64_t chunk = rpb * round, K = ceil_div(hw, chunk);
    auto part = at::empty({planes * K * 3}, acc_opts);
    auto* pp = reinterpret_cast<Moments<A>*>(part.mutable_data_ptr<A>());
    nchw_stats_kernel<T, V, kStatItems><<<planes * K, kThreads, 0, stream>>>(x, hw, chunk, K, pp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    stats_merge_kernel<A><<<merge_blocks, kThreads, 0, stream>>>(pp, planes, C, K, C * K, K, 1, hw, eps, mean, rstd);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const auto b = cl_block(C / V);
  const int64_t round = int64_t(b.ty) * kStatItems, rpi = ceil_div(hw, round);
  // One wave at the statistics kernel's 2 resident blocks per SM (its partials are per channel).
  const int64_t rpb = std::max<int64_t>(1, std::min(rpi, N * rpi * b.gy / (sms * 2)));
  const int64_t pix_chunk = rpb * round, K = ceil_div(hw, pix_chunk);
  auto part = at::empty({N * K * C * 3}, acc_opts);
  auto* pp = reinterpret_cast<Moments<A>*>(part.mutable_data_ptr<A>());
  nhwc_stats_kernel<T, V, kStatItems><<<dim3(N * K, b.gy), dim3(b.tx, b.ty), 0, stream>>>(x, hw, C, pix_chunk, K, pp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  stats_merge_kernel<A><<<merge_blocks, kThreads, 0, stream>>>(pp, planes, C, K, K * C, 1, C, hw, eps, mean, rstd);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int V>
void pad_normalize_launch(const T* x, T* y, const Geom& g, bool cl, Affine<typename AccOf<T>::type> aff,
                          typename AccOf<T>::type slope, const Residual<T>& res, cudaStream_t stream) {
  using namespace p2phd::norm_pad;
  const int64_t rows = (cl ? g.N : g.N * g.C) * (g.H + 2 * g.p);
  const int64_t blocks = ceil_div(rows, kWarps);
  if (cl)
    pad_normalize_nhwc_kernel<T, V><<<blocks, kThreads, 0, stream>>>(x, y, g, aff, slope, res);
  else
    pad_normalize_nchw_kernel<T><<<blocks, kThreads, 0, stream>>>(x, y, g, aff, slope, res);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int V>
void backward_launch(const T* x, const T* gy, T* dx, T* dres, const Geom& g, bool cl,
                     Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type slope, typename AccOf<T>::type* dw,
                     typename AccOf<T>::type* db, const at::TensorOptions& acc_opts, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  using namespace p2phd::norm;
  using namespace p2phd::norm_pad;
  const int64_t N = g.N, C = g.C, hw = g.H * g.W, planes = N * C, sms = sm_count();
  auto mterms = at::empty({planes * 2}, acc_opts);
  auto* mt = reinterpret_cast<Pair<A>*>(mterms.mutable_data_ptr<A>());
  if (!cl) {
    // Row chunks per plane: about 2 waves of 8 blocks per SM.
    const int64_t K = std::max<int64_t>(1, std::min(g.H, ceil_div(sms * 16, planes)));
    const int64_t rows_per = ceil_div(g.H, K), Kr = ceil_div(g.H, rows_per);
    auto part = at::empty({planes * Kr * 2}, acc_opts);
    auto* pp = reinterpret_cast<Pair<A>*>(part.mutable_data_ptr<A>());
    pad_bwd_reduce_nchw_kernel<T><<<planes * Kr, kThreads, 0, stream>>>(x, gy, g, rows_per, Kr, aff, slope, pp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bwd_merge_kernel<A><<<C, kThreads, 0, stream>>>(pp, N, C, Kr, C * Kr, Kr, 1, hw, mt, dw, db);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (dx || dres) {
      pad_bwd_dx_nchw_kernel<T><<<ceil_div(planes * g.H, kWarps), kThreads, 0, stream>>>(x, gy, dx, dres, g, aff, slope,
                                                                                        mt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return;
  }
  const auto b = cl_block(C / V);
  const int64_t K = std::max<int64_t>(1, std::min(ceil_div(hw, b.ty), ceil_div(sms * 4, N * b.gy)));
  const int64_t pix_chunk = ceil_div(hw, K), Kr = ceil_div(hw, pix_chunk);
  auto part = at::empty({N * Kr * C * 2}, acc_opts);
  auto* pp = reinterpret_cast<Pair<A>*>(part.mutable_data_ptr<A>());
  pad_bwd_reduce_nhwc_kernel<T, V><<<dim3(N * Kr, b.gy), dim3(b.tx, b.ty), 0, stream>>>(x, gy, g, pix_chunk, Kr, aff,
                                                                                         slope, pp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  bwd_merge_kernel<A><<<C, kThreads, 0, stream>>>(pp, N, C, Kr, Kr * C, 1, C, hw, mt, dw, db);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (dx || dres) {
    pad_bwd_dx_nhwc_kernel<T, V><<<ceil_div(N * g.H, kWarps), kThreads, 0, stream>>>(x, gy, dx, dres, g, aff, slope,
                                                                                     mt);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_pad_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, double eps, double negative_slope, int64_t pad) {
  check_forward(x, weight, bias, residual, eps, pad);
  TORCH_CHECK(x.is_cuda(), "instance_norm_act_pad: x must be a CUDA tensor, got ", x.device().str());
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const auto fmt = memory_format_of(x);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  auto out = forward_outputs(x, pad, eps);
  if (out.done) return {out.y, out.mean, out.rstd};
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto acc = acc_type_of(x);
  const auto xc = x.contiguous(fmt);
  const auto w = norm_host::affine_as(weight, acc), b = norm_host::affine_as(bias, acc);
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  const Geom g{N, C, H, W, pad};
  at::Tensor &yt = out.y, &mt = out.mean, &rt = out.rstd;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_pad_cuda", [&] {
    using T = typename DevType<scalar_t>::type;
    using A = typename AccOf<T>::type;
    constexpr int VW = vec_width<T>();
    const T* xp = reinterpret_cast<const T*>(xc.const_data_ptr<scalar_t>());
    T* yp = reinterpret_cast<T*>(yt.mutable_data_ptr<scalar_t>());
    A* mp = mt.mutable_data_ptr<A>();
    A* rp = rt.mutable_data_ptr<A>();
    const auto opts = x.options().dtype(acc);
    if (vectors_fit<T>({xp}, cl ? C : H * W))
      stats_launch<T, VW>(xp, N, C, H * W, cl, mp, rp, eps, opts, stream);
    else
      stats_launch<T, 1>(xp, N, C, H * W, cl, mp, rp, eps, opts, stream);
    const Affine<A> aff{mp, rp, w.defined() ? w.const_data_ptr<A>() : nullptr,
                        b.defined() ? b.const_data_ptr<A>() : nullptr};
    Residual<T> res{nullptr, 0, 0, 0, 0, false};
    if (given(residual)) {
      const auto& r = *residual;
      res = {reinterpret_cast<const T*>(r.const_data_ptr<scalar_t>()), r.stride(0), r.stride(1), r.stride(2),
             r.stride(3), false};
      // Vector loads of V channels: unit channel stride, every pixel's channel run starting 16-byte aligned.
      res.vec = r.stride(1) == 1 && aligned16(res.p) && (r.stride(0) % VW == 0) && (r.stride(2) % VW == 0) &&
                (r.stride(3) % VW == 0);
    }
    const auto slope = static_cast<A>(negative_slope);
    if (cl && vectors_fit<T>({xp, yp}, C))
      pad_normalize_launch<T, VW>(xp, yp, g, cl, aff, slope, res, stream);
    else
      pad_normalize_launch<T, 1>(xp, yp, g, cl, aff, slope, res, stream);
  });
  return {out.y, out.mean, out.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> instance_norm_act_pad_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double negative_slope,
    int64_t pad, std::array<bool, 4> output_mask) {
  check_backward(grad_y, x, mean, rstd, weight, bias, pad);
  TORCH_CHECK(x.is_cuda(), "instance_norm_act_pad_backward: x must be a CUDA tensor, got ", x.device().str());
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto acc = acc_type_of(x);
  const auto fmt = memory_format_of(x);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  auto out = backward_outputs(x, weight, bias, output_mask);
  at::Tensor &gx = out.gx, &gres = out.gres;
  const bool need_w = out.need_w, need_b = out.need_b, need_r = out.need_r;
  auto dw = need_w ? at::empty({C}, x.options().dtype(acc)) : at::Tensor();
  auto db = need_b ? at::empty({C}, x.options().dtype(acc)) : at::Tensor();
  if (N * C * H * W == 0) {
    if (need_w) dw.zero_();
    if (need_b) db.zero_();
  } else if (out.any()) {
    const auto xc = x.contiguous(fmt);
    const auto gyc = grad_y.to(x.scalar_type()).contiguous(fmt);
    const auto meanc = mean.contiguous(), rstdc = rstd.contiguous();
    const auto w = norm_host::affine_as(weight, acc), b = norm_host::affine_as(bias, acc);
    const auto stream = at::cuda::getCurrentCUDAStream().stream();
    const Geom g{N, C, H, W, pad};
    const auto run = [&](auto tag) {
      using scalar_t = decltype(tag);
      using T = typename DevType<scalar_t>::type;
      using A = typename AccOf<T>::type;
      constexpr int VW = vec_width<T>();
      const T* xp = reinterpret_cast<const T*>(xc.const_data_ptr<scalar_t>());
      const T* gp = reinterpret_cast<const T*>(gyc.const_data_ptr<scalar_t>());
      T* dp = out.need_x ? reinterpret_cast<T*>(gx.mutable_data_ptr<scalar_t>()) : nullptr;
      T* rp = need_r ? reinterpret_cast<T*>(gres.mutable_data_ptr<scalar_t>()) : nullptr;
      const Affine<A> aff{meanc.const_data_ptr<A>(), rstdc.const_data_ptr<A>(),
                          w.defined() ? w.const_data_ptr<A>() : nullptr, b.defined() ? b.const_data_ptr<A>() : nullptr};
      A* dwp = need_w ? dw.mutable_data_ptr<A>() : nullptr;
      A* dbp = need_b ? db.mutable_data_ptr<A>() : nullptr;
      const auto slope = static_cast<A>(negative_slope);
      const auto opts = x.options().dtype(acc);
      if (cl && vectors_fit<T>({xp, gp, dp, rp}, C))
        backward_launch<T, VW>(xp, gp, dp, rp, g, cl, aff, slope, dwp, dbp, opts, stream);
      else
        backward_launch<T, 1>(xp, gp, dp, rp, g, cl, aff, slope, dwp, dbp, opts, stream);
    };
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_pad_backward_cuda",
                                    [&] { run(scalar_t{}); });
  }
  at::Tensor gw = need_w ? dw.to(weight->scalar_type()) : at::empty({0}, x.options());
  at::Tensor gb = need_b ? db.to(bias->scalar_type()) : at::empty({0}, x.options());
  return {gx, gw, gb, gres};
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CUDA, m) {
  m.impl("instance_norm_act_pad", &instance_norm_act_pad_cuda);
  m.impl("instance_norm_act_pad_backward", &instance_norm_act_pad_backward_cuda);
}

}  // namespace pix2pixhd_fast
