// Element loads and stores for the CPU kernels: fp16/bf16 are computed in float, float/double in their own type.
// The conversions are branch-free, so the loops over them vectorize: c10::BFloat16's own float -> bf16 conversion
// tests for NaN with a branch, which keeps a loop scalar (about 15x slower on AVX-512 for a norm's passes).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace pix2pixhd_fast {

template <typename T>
struct Elem {  // float, double
  using acc = T;
  static inline T load(T v) { return v; }
  static inline T store(T v) { return v; }
};

template <>
struct Elem<c10::BFloat16> {
  using acc = float;
  static inline float load(c10::BFloat16 v) {
    const uint32_t u = static_cast<uint32_t>(v.x) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
  static inline c10::BFloat16 store(float f) {  // round to nearest even, NaN stays NaN (as c10 does)
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7fc0u : rounded), c10::BFloat16::from_bits());
  }
};

template <>
struct Elem<c10::Half> {
  using acc = float;
  static inline float load(c10::Half v) { return static_cast<float>(v); }
  static inline c10::Half store(float f) { return c10::Half(f); }
};

}  // namespace pix2pixhd_fast
