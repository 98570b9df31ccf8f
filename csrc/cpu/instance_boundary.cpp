// instance_boundary on the CPU: one pass over the id map, rows split across threads. Each output row is
// written once from three input rows (above, itself, below) that stay in cache between neighbouring rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>

#include "common/boundary.cuh"
#include "common/edge_dispatch.h"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

// Rows handed to a thread at a time: enough pixels that scheduling costs nothing.
constexpr int64_t kPixelsPerTask = 16384;

template <typename T>
constexpr bool is_float_id = std::is_floating_point_v<T> || std::is_same_v<T, c10::Half> ||
                             std::is_same_v<T, c10::BFloat16>;

// Throws (message contains "fractional") when a float id row holds a non-integral value. Called on a
// row right after its boundary row was computed, so it reads cached data.
template <typename T>
void check_integral_row(const T* row, int64_t W, const char* name) {
  if constexpr (is_float_id<T>) {
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    int ok = 1;  // int, not bool: a bool accumulator stops GCC vectorising the loop
    for (int64_t x = 0; x < W; ++x) ok &= static_cast<int>(boundary::is_integral(static_cast<A>(row[x])));
    if (!ok) {
      for (int64_t x = 0; x < W; ++x) {
        const A v = static_cast<A>(row[x]);
        TORCH_CHECK(boundary::is_integral(v), name, " holds fractional values (found ", num(v),
                    "); ids must be integers (use an integer dtype)");
      }
    }
  }
}

}  // namespace

at::Tensor instance_boundary_cpu(const at::Tensor& inst, at::ScalarType dtype) {
  TORCH_CHECK(inst.device().is_cpu(), "instance_boundary_cpu: inst must be a CPU tensor, got ", inst.device().str());
  const at::Tensor ids = check_ids(inst, "inst");  // [N,H,W] contiguous, original dtype
  const int64_t N = ids.size(0), H = ids.size(1), W = ids.size(2);
  // Validates dtype before anything is allocated.
  dispatch_out_kind</*kAllowByte=*/true>(dtype, "instance_boundary", [](auto) {});
  at::Tensor out = at::empty({N, 1, H, W}, ids.options().dtype(dtype));
  if (out.numel() == 0) return out;

  P2PHD_DISPATCH_ID_TYPES(ids.scalar_type(), "instance_boundary_cpu", [&] {
    using T = scalar_t;
    dispatch_out_kind<true>(dtype, "instance_boundary", [&](auto kind) {
      using U = typename decltype(kind)::U;
      const T* src = ids.const_data_ptr<T>();
      U* dst = static_cast<U*>(out.data_ptr());
      const int64_t grain = std::max<int64_t>(1, kPixelsPerTask / W);
      at::parallel_for(0, N * H, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t y = r % H;
          const T* cur = src + r * W;
          const T* up = y > 0 ? cur - W : cur;
          const T* down = y + 1 < H ? cur + W : cur;
          boundary::boundary_row(up, cur, down, W, decltype(kind)::kOne, dst + r * W);
          check_integral_row(cur, W, "inst");
        }
      });
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CPU, m) { m.impl("instance_boundary", &instance_boundary_cpu); }

}  // namespace pix2pixhd_fast
