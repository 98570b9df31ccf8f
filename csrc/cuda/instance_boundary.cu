// instance_boundary on CUDA: one thread per group of V adjacent pixels (V = 16 bytes of output), so each
// thread issues one 16-byte store (32 for fp64) and a warp writes 512 contiguous bytes. Ids of the row and
// the rows above/below are read with wide loads; the neighbouring groups read the same lines, which L1/L2
// serve, so DRAM traffic is close to the floor: ids read once + boundary map written once.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "common/boundary.cuh"
#include "common/edge_dispatch.h"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

constexpr int kThreads = 256;

// Pixels per thread for an output element of U: 16 bytes of output, and at least 4 pixels.
template <typename U>
constexpr int group_size() {
  return sizeof(U) >= 4 ? 4 : 16 / static_cast<int>(sizeof(U));
}

template <typename T, typename U, int V, typename I>
__global__ void __launch_bounds__(kThreads)
    instance_boundary_kernel(const T* __restrict__ ids, U* __restrict__ out, U one, I N, I H, I W,
                             I groups_per_image) {
  const I g = static_cast<I>(blockIdx.x) * kThreads + static_cast<I>(threadIdx.x);
  if (g >= N * groups_per_image) return;
  const I n = g / groups_per_image;
  const I p0 = (g - n * groups_per_image) * V;
  const I HW = H * W;
  bool e[V];
  boundary::group_edges_at<T, V, I>(ids + n * HW, H, W, p0, e);
  U v[V];
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] = e[i] ? one : U(0);
  boundary::store_group(out + n * HW + p0, v, HW - p0);
}

template <typename T, typename U, typename I>
void launch(const at::Tensor& ids, at::Tensor& out, U one) {
  constexpr int V = group_size<U>();
  const I N = ids.size(0), H = ids.size(1), W = ids.size(2);
  const I gpi = (H * W + V - 1) / V;
  const int64_t threads = static_cast<int64_t>(N) * gpi;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  instance_boundary_kernel<T, U, V, I><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      ids.const_data_ptr<T>(), static_cast<U*>(out.data_ptr()), one, N, H, W, gpi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor instance_boundary_cuda(const at::Tensor& inst, at::ScalarType dtype) {
  TORCH_CHECK(inst.is_cuda(), "instance_boundary_cuda: inst must be a CUDA tensor, got ", inst.device().str());
  dispatch_out_kind</*kAllowByte=*/true>(dtype, "instance_boundary", [](auto) {});
  const c10::cuda::CUDAGuard guard(inst.device());
  // Float ids are checked for integral values by the Python wrapper (check=True): a kernel cannot raise.
  const at::Tensor ids = check_ids(inst, "inst");
  const int64_t N = ids.size(0), H = ids.size(1), W = ids.size(2);
  at::Tensor out = at::empty({N, 1, H, W}, ids.options().dtype(dtype));
  if (out.numel() == 0) return out;
  // 32-bit index math when every flat index (plus a group of slack) fits.
  const bool small = out.numel() + 64 < std::numeric_limits<int32_t>::max();
  P2PHD_DISPATCH_ID_TYPES(ids.scalar_type(), "instance_boundary_cuda", [&] {
    dispatch_out_kind<true>(dtype, "instance_boundary", [&](auto kind) {
      using K = decltype(kind);
      if (small) {
        launch<scalar_t, typename K::U, int32_t>(ids, out, K::kOne);
      } else {
        launch<scalar_t, typename K::U, int64_t>(ids, out, K::kOne);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CUDA, m) { m.impl("instance_boundary", &instance_boundary_cuda); }

}  // namespace pix2pixhd_fast
