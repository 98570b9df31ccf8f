// CUDA kernels of instance_avg_pool: launchers around the device code in common/instance_avg_pool.cuh
// (see its header comment for the four-kernel design). No host sync: every workspace buffer is sized for
// the worst case on the host, and the kernels only touch what the data needs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "common/instance_avg_pool.cuh"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

// Number of distinct values an id dtype can hold (caps the table for small id types).
int64_t id_value_range(at::ScalarType st) {
  switch (st) {
    case at::kByte:
    case at::kChar:
      return 256;
    case at::kShort:
    case at::kHalf:
    case at::kBFloat16:
      return 65536;
    default:
      return std::numeric_limits<int64_t>::max();
  }
}

int64_t align_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

template <typename scalar_t, typename acc_t, typename id_t>
void launch(const at::Tensor& feat, const at::Tensor& ids, at::Tensor& out, bool channels_last) {
  using namespace iap;
  const int64_t n = feat.size(0);
  const int channels = static_cast<int>(feat.size(1));
  const int64_t hw = feat.size(2) * feat.size(3);
  const int64_t tiles = (hw + kTile - 1) / kTile;
  const int64_t cap_max = std::min(hw, id_value_range(ids.scalar_type())) * 3 / 2 + 1;
  const int64_t table_stride = cap_max + 1;  // + the reserved slot of the INT64_MIN key

  // Workspace: tile partials (worst case: every pixel its own id) and the per-image tables. A tile holds at
  // most min(H*W, kTile) distinct ids: sizing by kTile alone would cost kTile / (H*W) times the feature
  // map for small images with many channels.
  const int64_t part_stride = std::min<int64_t>(hw, kTile);
  const int64_t n_part = n * tiles * part_stride;
  int64_t off = 0;
  auto carve = [&](int64_t bytes) {
    const int64_t at = off;
    off = align_up(off + bytes, 256);
    return at;
  };
  const int64_t o_part_keys = carve(n_part * 8);
  const int64_t o_part_cnt = carve(n_part * 4);
  const int64_t o_part_sums = carve(n_part * channels * static_cast<int64_t>(sizeof(acc_t)));
  const int64_t o_part_num = carve(n * tiles * 4);
  const int64_t o_caps = carve(n * 4);
  const int64_t o_keys = carve(n * table_stride * 8);
  const int64_t o_cnt = carve(n * table_stride * 4);
  const int64_t o_sums = carve(n * table_stride * channels * static_cast<int64_t>(sizeof(acc_t)));
  at::Tensor ws = at::empty({off}, feat.options().dtype(at::kByte));
  auto* base = static_cast<unsigned char*>(ws.data_ptr());
  auto* part_keys = reinterpret_cast<unsigned long long*>(base + o_part_keys);
  auto* part_cnt = reinterpret_cast<int*>(base + o_part_cnt);
  auto* part_sums = reinterpret_cast<acc_t*>(base + o_part_sums);
  auto* part_num = reinterpret_cast<int*>(base + o_part_num);
  auto* caps = reinterpret_cast<uint32_t*>(base + o_caps);
  auto* keys = reinterpret_cast<unsigned long long*>(base + o_keys);
  auto* cnt = reinterpret_cast<int*>(base + o_cnt);
  auto* sums = reinterpret_cast<acc_t*>(base + o_sums);

  const auto* feat_ptr = feat.const_data_ptr<scalar_t>();
  auto* out_ptr = out.mutable_data_ptr<scalar_t>();
  const auto* ids_ptr = ids.const_data_ptr<id_t>();
  constexpr auto vec_align = static_cast<uintptr_t>(sizeof(Pack4<scalar_t>));
  const bool vec = !channels_last && hw % kPixPerThread == 0 &&
                   reinterpret_cast<uintptr_t>(feat_ptr) % vec_align == 0 &&
                   reinterpret_cast<uintptr_t>(out_ptr) % vec_align == 0;

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 tile_grid(static_cast<unsigned>(tiles), static_cast<unsigned>(n));
  tile_pool_kernel<scalar_t, acc_t, id_t><<<tile_grid, kThreads, 0, stream>>>(
      feat_ptr, ids_ptr, hw, channels, static_cast<int>(tiles), static_cast<int>(part_stride), channels_last,
      vec, part_keys, part_cnt, part_sums, part_num);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Enough blocks to zero a worst-case table quickly; the typical table is tiny and most blocks exit early.
  const int64_t words = table_stride * (channels + 2);
  const int64_t init_blocks = std::clamp<int64_t>((words + kThreads * 16 - 1) / (kThreads * 16), 1, 128);
  const dim3 init_grid(static_cast<unsigned>(init_blocks), static_cast<unsigned>(n));
  table_init_kernel<acc_t><<<init_grid, kThreads, 0, stream>>>(
      part_num, static_cast<int>(tiles), static_cast<uint32_t>(cap_max), channels, table_stride, keys, cnt,
      sums, caps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t merge_warps = (tiles + 31) / 32 * kMergeChunks;
  const int64_t merge_blocks = (merge_warps + kThreads / 32 - 1) / (kThreads / 32);
  const dim3 merge_grid(static_cast<unsigned>(merge_blocks), static_cast<unsigned>(n));
  merge_kernel<acc_t><<<merge_grid, kThreads, 0, stream>>>(
      part_keys, part_cnt, part_sums, part_num, static_cast<int>(tiles), static_cast<int>(part_stride),
      channels, table_stride, keys, cnt, sums, caps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  write_kernel<scalar_t, acc_t, id_t><<<tile_grid, kThreads, 0, stream>>>(
      ids_ptr, hw, channels, channels_last, vec, table_stride, keys, cnt, sums, caps, out_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The deterministic path (see the comment above sorted_mean_kernel in common/instance_avg_pool.cuh).
template <typename scalar_t, typename acc_t, typename id_t>
void launch_sorted(const at::Tensor& feat, const at::Tensor& ids, at::Tensor& out, bool channels_last) {
  using namespace iap;
  const int64_t n = feat.size(0);
  const int64_t hw = feat.size(2) * feat.size(3);
  const int64_t total = n * hw;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor keys = at::empty({n, hw}, ids.options().dtype(at::kLong));
  const int64_t key_blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65536);
  id_keys_kernel<id_t><<<static_cast<unsigned>(key_blocks), kThreads, 0, stream>>>(
      ids.const_data_ptr<id_t>(), total, keys.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Stable sort of each image's row: equal keys become adjacent runs, in a reproducible order.
  auto [sorted, perm] = at::sort(keys, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  sorted = sorted.contiguous();
  perm = perm.contiguous();
  const int64_t warps_per_block = kThreads / 32;
  const int64_t mean_blocks = std::min<int64_t>((total + warps_per_block - 1) / warps_per_block, 65536);
  sorted_mean_kernel<scalar_t, acc_t><<<static_cast<unsigned>(mean_blocks), kThreads, 0, stream>>>(
      sorted.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>(), feat.const_data_ptr<scalar_t>(), n, hw,
      static_cast<int>(feat.size(1)), channels_last, out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Images per launch of the tiled path: its kernels put the image index in grid.y (at most 65535).
constexpr int64_t kMaxImagesPerLaunch = 65535;

}  // namespace

at::Tensor instance_avg_pool_cuda(const at::Tensor& feat, const at::Tensor& inst) {
  check_float_input(feat, "feat");
  TORCH_CHECK(feat.dim() == 4, "instance_avg_pool: feat must have shape [N,C,H,W], got ", dims(feat.sizes()));
  TORCH_CHECK(feat.is_cuda(), "instance_avg_pool: feat must be a CUDA tensor");
  check_same_device(feat, "feat", inst, "inst");
  at::Tensor ids = check_ids(inst, "inst");
  TORCH_CHECK(ids.size(0) == feat.size(0) && ids.size(1) == feat.size(2) && ids.size(2) == feat.size(3),
              "instance_avg_pool: feat ", dims(feat.sizes()), " and inst ", dims(inst.sizes()), " must share N, H and W");
  const c10::cuda::CUDAGuard guard(feat.device());
  const bool channels_last = wants_channels_last(feat);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty(feat.sizes(), feat.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const int64_t hw = feat.size(2) * feat.size(3);
  TORCH_CHECK(hw <= (int64_t{1} << 30), "instance_avg_pool: H*W must be at most 2^30, got ", num(hw));
  // Channel indices are int in the kernels (channel loops step by kThreads past C).
  TORCH_CHECK(feat.size(1) <= (int64_t{1} << 30), "instance_avg_pool: at most 2^30 channels, got ",
              num(feat.size(1)));
  const at::Tensor x = feat.contiguous(fmt);
  // torch.use_deterministic_algorithms(True): a fixed summation order instead of float atomics.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const int64_t n = feat.size(0);
  P2PHD_DISPATCH_ID_TYPES(ids.scalar_type(), "instance_avg_pool_cuda", [&] {
    using id_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_avg_pool_cuda", [&] {
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      if (deterministic) {
        launch_sorted<scalar_t, acc_t, id_t>(x, ids, out, channels_last);
        return;
      }
      // Images are independent: larger batches run as several launches over views of the batch.
      for (int64_t n0 = 0; n0 < n; n0 += kMaxImagesPerLaunch) {
        const int64_t nb = std::min(kMaxImagesPerLaunch, n - n0);
        at::Tensor out_part = out.narrow(0, n0, nb);
        launch<scalar_t, acc_t, id_t>(x.narrow(0, n0, nb), ids.narrow(0, n0, nb), out_part, channels_last);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CUDA, m) { m.impl("instance_avg_pool", &instance_avg_pool_cuda); }

}  // namespace pix2pixhd_fast
