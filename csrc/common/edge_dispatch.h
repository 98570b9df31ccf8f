// ATen-side helpers of instance_boundary / encode_input (CPU and CUDA): output-dtype dispatch to the
// integer "bits" type the kernels store, and the feature-value conversion rule.
#pragma once

#include <ATen/ATen.h>

#include <cstring>
#include <type_traits>

#include "common/boundary.cuh"

namespace pix2pixhd_fast {

// An output dtype as the kernels see it: O the element type, U the integer type of the same width that
// 0/1 are stored as (bit patterns, see boundary.cuh), kOne the pattern of 1.
template <typename O_, typename U_, U_ kOne_>
struct OutKind {
  using O = O_;
  using U = U_;
  static constexpr U_ kOne = kOne_;
};
using OutF32 = OutKind<float, uint32_t, boundary::kOneF32>;
using OutF16 = OutKind<c10::Half, uint16_t, boundary::kOneF16>;
using OutBF16 = OutKind<c10::BFloat16, uint16_t, boundary::kOneBF16>;
using OutF64 = OutKind<double, uint64_t, boundary::kOneF64>;
using OutU8 = OutKind<uint8_t, uint8_t, boundary::kOneU8>;

inline bool is_float_out(at::ScalarType st) {
  return st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble;
}

// f(OutKind{}) for a float output dtype; with kAllowByte, uint8 and bool too (both store 0/1 bytes).
template <bool kAllowByte, typename F>
void dispatch_out_kind(at::ScalarType st, const char* op, F&& f) {
  switch (st) {
    case at::kFloat:
      return f(OutF32{});
    case at::kHalf:
      return f(OutF16{});
    case at::kBFloat16:
      return f(OutBF16{});
    case at::kDouble:
      return f(OutF64{});
    case at::kByte:
    case at::kBool:
      if constexpr (kAllowByte) return f(OutU8{});
      [[fallthrough]];
    default:
      TORCH_CHECK(false, op, ": unsupported output dtype ", st,
                  kAllowByte ? " (expected float32, float16, bfloat16, float64, uint8 or bool)"
                             : " (expected float32, float16, bfloat16 or float64)");
  }
}

// Feature values go straight to the output dtype (fp64 stays exact for gradcheck); narrower outputs
// round once through float, as the reference's feat.float().to(dtype) does.
template <typename O, typename F>
C10_HOST_DEVICE inline O convert_feat(F v) {
  if constexpr (std::is_same_v<O, double>) {
    return static_cast<double>(v);
  } else {
    return static_cast<O>(static_cast<float>(v));
  }
}

template <typename U, typename O>
C10_HOST_DEVICE inline U bits_of(O v) {
  static_assert(sizeof(U) == sizeof(O), "bit pattern width");
  U u;
  memcpy(&u, &v, sizeof(U));
  return u;
}

}  // namespace pix2pixhd_fast
