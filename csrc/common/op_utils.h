// Shared ATen-side helpers for the kernels: input checks, the id-dtype dispatch and the memory-format
// rule that the fake kernels in pix2pixhd_fast/ops.py mirror exactly.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <string>
#include <type_traits>

namespace pix2pixhd_fast {

// Error-message formatting without std::ostream numeric insertion. With torch 2.11 wheels and a newer system
// g++, streaming an integer or an IntArrayRef from extension code into TORCH_CHECK's ostringstream crashes
// inside libstdc++'s num_put (every op): the extension's inline ostream code and the process's libstdc++
// disagree. std::to_string formats through vsnprintf and is safe; strings,
// ScalarType names and Device::str() stream as plain characters. Use these for every number in a message.
template <typename T>
inline std::string num(T v) {
  if constexpr (std::is_integral_v<T>) {
    return std::to_string(static_cast<long long>(v));
  } else {
    return std::to_string(static_cast<double>(v));  // float, double, at::Half, at::BFloat16
  }
}
inline std::string dims(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Output memory format of an op on a 4-D tensor: channels-last when the channel dim has unit stride and
// more than one channel (covers channels-last tensors and spatial slices of them), else NCHW.
// Python mirror (the fake kernels use it): pix2pixhd_fast.reference.output_memory_format.
inline bool wants_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.size(1) > 1 && x.stride(1) == 1;
}

inline at::MemoryFormat memory_format_of(const at::Tensor& x) {
  return wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Id maps: [N,1,H,W] or [N,H,W], any integer dtype or a float dtype holding integral values.
// Returns a contiguous [N,H,W] view/copy (no dtype change: ids are compared as stored).
inline at::Tensor check_ids(const at::Tensor& inst, const char* name) {
  TORCH_CHECK(inst.dim() == 3 || (inst.dim() == 4 && inst.size(1) == 1), name,
              " must have shape [N,1,H,W] or [N,H,W], got ", dims(inst.sizes()));
  const auto st = inst.scalar_type();
  // Explicit list: isIntegralType also admits the barely supported uint16/32/64, which no kernel dispatches.
  TORCH_CHECK(st == at::kByte || st == at::kChar || st == at::kShort || st == at::kInt || st == at::kLong ||
                  st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              name, " must hold integer ids (uint8/int8/int16/int32/int64, or float with integral values), got ",
              st);
  auto ids = inst.dim() == 4 ? inst.select(1, 0) : inst;
  return ids.contiguous();
}

inline void check_float_input(const at::Tensor& x, const char* name) {
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, name,
              " must be float32, float16, bfloat16 or float64, got ", st);
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ",
              a.device().str(), " and ", b.device().str());
}

}  // namespace pix2pixhd_fast

// Dispatch over every dtype an id map may have.
#define P2PHD_DISPATCH_ID_TYPES(TYPE, NAME, ...)                                                         \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE_INTEGRAL_TYPES(__VA_ARGS__)                            \
                                     AT_DISPATCH_CASE_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, __VA_ARGS__))
