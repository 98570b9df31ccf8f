// Fused instance norm + affine + LeakyReLU (forward and backward): CUDA launchers.
//
// Forward: statistics kernel (one partial per block) -> merge kernel (one warp per plane, writes mean and
// rstd) -> fused normalize + affine + activation kernel. Backward: reduction kernel (partials of sum(dz)
// and sum(dz * xhat)) -> merge kernel (per-plane means, dw, db) -> dx kernel. All on the current stream,
// no host sync, workspace from the caching allocator. The device code is in common/instance_norm_act.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/instance_norm_act.cuh"
#include "common/instance_norm_act_host.h"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

using namespace norm_host;

using p2phd::norm::AccOf;
using p2phd::norm::Affine;
using p2phd::norm::kThreads;
using p2phd::norm::kWarps;
using p2phd::norm::Moments;
using p2phd::norm::Pair;

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

// Loads in flight per thread: statistics keep one round in registers for the two-pass variance; the
// two-input backward kernels issue 2 x 4.
constexpr int kStatItems = 8;
constexpr int kEltItems = 4;
constexpr int kBwdItems = 4;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Rounds per block of a reduction: `waves` x `blocks_per_sm` blocks per SM in all, fewer partials beyond.
// NCHW: ~2 waves at full occupancy. Channels-last: one wave at its 2 resident blocks per SM, because its
// partials are per channel (C times more of them) and the merge reads them with one warp per plane.
int64_t rounds_per_block(int64_t rounds_per_plane, int64_t total_rounds, int64_t blocks_per_sm,
                         int64_t waves) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t target_blocks = sms * blocks_per_sm * waves;
  return std::max<int64_t>(1, std::min(rounds_per_plane, total_rounds / target_blocks));
}

int64_t nchw_rounds(int64_t rpp, int64_t total) { return rounds_per_block(rpp, total, 2048 / kThreads, 2); }
int64_t nhwc_rounds(int64_t rpi, int64_t total) { return rounds_per_block(rpi, total, 2, 1); }

// Channels-last block shape: TX threads along the C/V channel vectors, TY along pixels.
struct ClBlock {
  int tx, ty;
  int64_t gy;  // blocks along channels
};

ClBlock cl_block(int64_t cvec) {
  const int tx = static_cast<int>(std::min<int64_t>(cvec, kThreads));
  return {tx, kThreads / tx, ceil_div(cvec, tx)};
}

template <typename T, int V>
void forward_launch(const T* x, T* y, int64_t N, int64_t C, int64_t hw, bool cl,
                    Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type* mean,
                    typename AccOf<T>::type* rstd, double eps, typename AccOf<T>::type slope,
                    const at::TensorOptions& acc_opts, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  using namespace p2phd::norm;
  const int64_t planes = N * C;
  const int64_t merge_blocks = ceil_div(planes, kWarps);
  if (!cl) {
    const int64_t round = int64_t(kThreads) * V * kStatItems;
    const int64_t rpp = ceil_div(hw, round);
    const int64_t chunk = nchw_rounds(rpp, planes * rpp) * round, K = ceil_div(hw, chunk);
    auto part = at::empty({planes * K * 3}, acc_opts);
    auto* pp = reinterpret_cast<Moments<A>*>(part.mutable_data_ptr<A>());
    nchw_stats_kernel<T, V, kStatItems><<<planes * K, kThreads, 0, stream>>>(x, hw, chunk, K, pp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    stats_merge_kernel<A><<<merge_blocks, kThreads, 0, stream>>>(pp, planes, C, K, C * K, K, 1, hw, eps, mean,
                                                                 rstd);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t Ke = ceil_div(hw, int64_t(kThreads) * V * kEltItems);
    nchw_normalize_kernel<T, V, kEltItems><<<planes * Ke, kThreads, 0, stream>>>(x, y, hw, Ke, C, aff, slope);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const auto b = cl_block(C / V);
  const int64_t round = int64_t(b.ty) * kStatItems;  // pixels per block round
  const int64_t rpi = ceil_div(hw, round);
  const int64_t pix_chunk = nhwc_rounds(rpi, N * rpi * b.gy) * round, K = ceil_div(hw, pix_chunk);
  auto part = at::empty({N * K * C * 3}, acc_opts);
  auto* pp = reinterpret_cast<Moments<A>*>(part.mutable_data_ptr<A>());
  const dim3 block(b.tx, b.ty);
  nhwc_stats_kernel<T, V, kStatItems><<<dim3(N * K, b.gy), block, 0, stream>>>(x, hw, C, pix_chunk, K, pp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  stats_merge_kernel<A><<<merge_blocks, kThreads, 0, stream>>>(pp, planes, C, K, K * C, 1, C, hw, eps, mean,
                                                               rstd);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t Ke = ceil_div(hw, int64_t(b.ty) * kEltItems);
  nhwc_normalize_kernel<T, V, kEltItems><<<dim3(N * Ke, b.gy), block, 0, stream>>>(x, y, hw, C, Ke, aff,
                                                                                     slope);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int V>
void backward_launch(const T* x, const T* dy, T* dx, int64_t N, int64_t C, int64_t hw, bool cl,
                     Affine<typename AccOf<T>::type> aff, typename AccOf<T>::type slope,
                     typename AccOf<T>::type* dw, typename AccOf<T>::type* db,
                     const at::TensorOptions& acc_opts, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  using namespace p2phd::norm;
  const int64_t planes = N * C;
  auto mterms = at::empty({planes * 2}, acc_opts);
  auto* mt = reinterpret_cast<Pair<A>*>(mterms.mutable_data_ptr<A>());
  if (!cl) {
    const int64_t round = int64_t(kThreads) * V * kBwdItems;
    const int64_t rpp = ceil_div(hw, round);
    const int64_t chunk = nchw_rounds(rpp, planes * rpp) * round, K = ceil_div(hw, chunk);
    auto part = at::empty({planes * K * 2}, acc_opts);
    auto* pp = reinterpret_cast<Pair<A>*>(part.mutable_data_ptr<A>());
    nchw_bwd_reduce_kernel<T, V, kBwdItems><<<planes * K, kThreads, 0, stream>>>(x, dy, hw, chunk, K, C, aff,
                                                                                   slope, pp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bwd_merge_kernel<A><<<C, kThreads, 0, stream>>>(pp, N, C, K, C * K, K, 1, hw, mt, dw, db);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (dx) {
      const int64_t Ke = ceil_div(hw, int64_t(kThreads) * V * kBwdItems);
      nchw_bwd_dx_kernel<T, V, kBwdItems><<<planes * Ke, kThreads, 0, stream>>>(x, dy, dx, hw, Ke, C, aff,
                                                                                  slope, mt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return;
  }
  const auto b = cl_block(C / V);
  const int64_t round = int64_t(b.ty) * kBwdItems;
  const int64_t rpi = ceil_div(hw, round);
  const int64_t pix_chunk = nhwc_rounds(rpi, N * rpi * b.gy) * round, K = ceil_div(hw, pix_chunk);
  auto part = at::empty({N * K * C * 2}, acc_opts);
  auto* pp = reinterpret_cast<Pair<A>*>(part.mutable_data_ptr<A>());
  const dim3 block(b.tx, b.ty);
  nhwc_bwd_reduce_kernel<T, V, kBwdItems><<<dim3(N * K, b.gy), block, 0, stream>>>(x, dy, hw, C, pix_chunk, K,
                                                                                    aff, slope, pp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  bwd_merge_kernel<A><<<C, kThreads, 0, stream>>>(pp, N, C, K, K * C, 1, C, hw, mt, dw, db);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (dx) {
    const int64_t Ke = ceil_div(hw, int64_t(b.ty) * kBwdItems);
    nhwc_bwd_dx_kernel<T, V, kBwdItems><<<dim3(N * Ke, b.gy), block, 0, stream>>>(x, dy, dx, hw, C, Ke, aff,
                                                                                    slope, mt);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// 16-byte vectors when every pointer is aligned and rows (NCHW planes, channels-last pixels) are whole
// vectors; one element per access otherwise. fp64 (a gradcheck dtype) always takes the scalar path.
template <typename T>
constexpr int vec_width() {
  return std::is_same_v<T, double> ? 1 : static_cast<int>(16 / sizeof(T));
}

template <typename T>
bool use_vectors(std::initializer_list<const void*> ptrs, int64_t C, int64_t hw, bool cl) {
  constexpr int V = vec_width<T>();
  if constexpr (V == 1) {
    return false;
  } else {
    if ((cl ? C : hw) % V != 0) return false;
    for (const void* p : ptrs)
      if (!aligned16(p)) return false;
    return true;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_cuda(const at::Tensor& x,
                                                                      const std::optional<at::Tensor>& weight,
                                                                      const std::optional<at::Tensor>& bias,
                                                                      double eps, double negative_slope) {
  check_forward(x, weight, bias, eps);
  TORCH_CHECK(x.is_cuda(), "instance_norm_act: x must be a CUDA tensor, got ", x.device().str());
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const auto fmt = memory_format_of(x);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const int64_t N = x.size(0), C = x.size(1), hw = x.size(2) * x.size(3);
  const auto acc = acc_type_of(x);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  if (forward_outputs(x, eps, fmt, out)) return out;
  // Named references, not a structured binding: the kernels' lambdas capture them, which C++17 forbids.
  at::Tensor &y = std::get<0>(out), &mean = std::get<1>(out), &rstd = std::get<2>(out);
  const auto xc = x.contiguous(fmt);
  const auto w = affine_as(weight, acc), b = affine_as(bias, acc);
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_cuda", [&] {
    using T = typename DevType<scalar_t>::type;
    using A = typename AccOf<T>::type;
    const T* xp = reinterpret_cast<const T*>(xc.const_data_ptr<scalar_t>());
    T* yp = reinterpret_cast<T*>(y.mutable_data_ptr<scalar_t>());
    A* mp = mean.mutable_data_ptr<A>();
    A* rp = rstd.mutable_data_ptr<A>();
    const Affine<A> aff{mp, rp, w.defined() ? w.const_data_ptr<A>() : nullptr,
                        b.defined() ? b.const_data_ptr<A>() : nullptr};
    const auto slope = static_cast<A>(negative_slope);
    const auto opts = x.options().dtype(acc);
    if (use_vectors<T>({xp, yp}, C, hw, cl))
      forward_launch<T, vec_width<T>()>(xp, yp, N, C, hw, cl, aff, mp, rp, eps, slope, opts, stream);
    else
      forward_launch<T, 1>(xp, yp, N, C, hw, cl, aff, mp, rp, eps, slope, opts, stream);
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double negative_slope,
    std::array<bool, 3> output_mask) {
  check_backward(grad_y, x, mean, rstd, weight, bias);
  TORCH_CHECK(x.is_cuda(), "instance_norm_act_backward: x must be a CUDA tensor, got ", x.device().str());
  const int64_t N = x.size(0), C = x.size(1), hw = x.size(2) * x.size(3);
  const auto acc = acc_type_of(x);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const bool need_w = weight.has_value() && weight->defined() && output_mask[1];
  const bool need_b = bias.has_value() && bias->defined() && output_mask[2];
  const auto fmt = memory_format_of(x);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;

  at::Tensor gx = at::empty(x.sizes(), x.options(), fmt);
  if (!output_mask[0]) gx.zero_();  // undefined-free outputs: an unneeded grad_x is zeros
  auto dw = need_w ? at::empty({C}, x.options().dtype(acc)) : at::Tensor();
  auto db = need_b ? at::empty({C}, x.options().dtype(acc)) : at::Tensor();
  if (N * C * hw == 0) {
    if (need_w) dw.zero_();
    if (need_b) db.zero_();
  } else if (output_mask[0] || need_w || need_b) {
    const auto xc = x.contiguous(fmt);
    const auto gyc = grad_y.to(x.scalar_type()).contiguous(fmt);
    const auto meanc = mean.contiguous(), rstdc = rstd.contiguous();
    const auto w = affine_as(weight, acc), b = affine_as(bias, acc);
    const auto stream = at::cuda::getCurrentCUDAStream().stream();
    const auto run = [&](auto tag) {
      using scalar_t = decltype(tag);
      using T = typename DevType<scalar_t>::type;
      using A = typename AccOf<T>::type;
      const T* xp = reinterpret_cast<const T*>(xc.const_data_ptr<scalar_t>());
      const T* gp = reinterpret_cast<const T*>(gyc.const_data_ptr<scalar_t>());
      T* dp = output_mask[0] ? reinterpret_cast<T*>(gx.mutable_data_ptr<scalar_t>()) : nullptr;
      const A* wp = w.defined() ? w.const_data_ptr<A>() : nullptr;
      const A* bp = b.defined() ? b.const_data_ptr<A>() : nullptr;
      const Affine<A> aff{meanc.const_data_ptr<A>(), rstdc.const_data_ptr<A>(), wp, bp};
      A* dwp = need_w ? dw.mutable_data_ptr<A>() : nullptr;
      A* dbp = need_b ? db.mutable_data_ptr<A>() : nullptr;
      const auto slope = static_cast<A>(negative_slope);
      const auto opts = x.options().dtype(acc);
      if (use_vectors<T>({xp, gp, dp ? dp : xp}, C, hw, cl))
        backward_launch<T, vec_width<T>()>(xp, gp, dp, N, C, hw, cl, aff, slope, dwp, dbp, opts, stream);
      else
        backward_launch<T, 1>(xp, gp, dp, N, C, hw, cl, aff, slope, dwp, dbp, opts, stream);
    };
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_backward",
                                    [&] { run(scalar_t{}); });
  }
  at::Tensor gw = need_w ? dw.to(weight->scalar_type()) : at::empty({0}, x.options());
  at::Tensor gb = need_b ? db.to(bias->scalar_type()) : at::empty({0}, x.options());
  return {gx, gw, gb};
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CUDA, m) {
  m.impl("instance_norm_act", &instance_norm_act_cuda);
  m.impl("instance_norm_act_backward", &instance_norm_act_backward_cuda);
}

}  // namespace pix2pixhd_fast
