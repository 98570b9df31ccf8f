// Instance-boundary neighbour compares, free of ATen types: shared by the CPU and CUDA kernels of
// instance_boundary and encode_input (and usable from a TensorRT plugin or a LibTorch program).
//
// A pixel is on a boundary when its id differs from any of its 4-neighbours that exist (left, right, up,
// down): the reference pix2pixHD get_edges, which marks both sides of every boundary. Ids are compared in
// their own type (never through fp16, which would merge 26001 and 26002).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define P2PHD_HD __host__ __device__ __forceinline__
#define P2PHD_UNROLL _Pragma("unroll")
#else
#define P2PHD_HD inline
#define P2PHD_UNROLL  // g++ unrolls the fixed-trip loop itself; it does not know the pragma
#endif

namespace pix2pixhd_fast {
namespace boundary {

// Bit patterns of 1 in each output dtype. Kernels store these as plain integers (a select, no float
// conversion), which vectorises on the CPU and gives wide stores on the GPU.
constexpr uint8_t kOneU8 = 1;                         // uint8 and bool
constexpr uint16_t kOneF16 = 0x3C00;                  // IEEE half
constexpr uint16_t kOneBF16 = 0x3F80;                 // bfloat16
constexpr uint32_t kOneF32 = 0x3F800000u;             // float
constexpr uint64_t kOneF64 = 0x3FF0000000000000ull;  // double

// One row of the boundary map. `up` and `down` point to the rows above and below, or to `cur` itself
// where that row does not exist, so the missing neighbour compares equal and the loop needs no branches.
// Writes `one` or 0 into out[0..W). The interior loop is branch-free so compilers vectorise it.
template <typename T, typename U>
P2PHD_HD void boundary_row(const T* __restrict__ up, const T* __restrict__ cur, const T* __restrict__ down,
                           int64_t W, U one, U* __restrict__ out) {
  if (W <= 0) return;
  if (W == 1) {
    const T c = cur[0];
    out[0] = ((c != up[0]) | (c != down[0])) ? one : U(0);
    return;
  }
  {
    const T c = cur[0];
    out[0] = ((c != cur[1]) | (c != up[0]) | (c != down[0])) ? one : U(0);
  }
  for (int64_t x = 1; x < W - 1; ++x) {
    const T c = cur[x];
    const bool e = (c != cur[x - 1]) | (c != cur[x + 1]) | (c != up[x]) | (c != down[x]);
    out[x] = e ? one : U(0);
  }
  {
    const T c = cur[W - 1];
    out[W - 1] = ((c != cur[W - 2]) | (c != up[W - 1]) | (c != down[W - 1])) ? one : U(0);
  }
}

// Whether pixel x of row `cur` is on a boundary (`up`/`down` as in boundary_row).
template <typename T, typename I>
P2PHD_HD bool pixel_edge(const T* up, const T* cur, const T* down, I x, I W) {
  const T c = cur[x];
  bool e = (c != up[x]) | (c != down[x]);
  if (x > 0) e |= c != cur[x - 1];
  if (x + 1 < W) e |= c != cur[x + 1];
  return e;
}

// V adjacent pixels of one row: c[i] their ids, `left`/`right` the ids just outside the group (or c[0] /
// c[V-1] at the image border), u/d the ids above/below (or c where that row does not exist).
template <typename T, int V>
P2PHD_HD void group_edges(const T (&c)[V], T left, T right, const T (&u)[V], const T (&d)[V], bool (&e)[V]) {
P2PHD_UNROLL
  for (int i = 0; i < V; ++i) {
    const T l = i == 0 ? left : c[i - 1];
    const T r = i == V - 1 ? right : c[i + 1];
    e[i] = (c[i] != l) | (c[i] != r) | (c[i] != u[i]) | (c[i] != d[i]);
  }
}

// Integral test for float ids without trunc() (which does not vectorise on baseline x86-64): |v| below
// 2^(mantissa bits) is integral iff adding and removing that power of two leaves it unchanged; larger
// finite values are always integral. NaN fails, infinities pass (as v != trunc(v) in Python).
P2PHD_HD bool is_integral(float v) {
  constexpr float kBig = 8388608.0f;  // 2^23
  const float a = fabsf(v);
  return (a >= kBig) | (((a + kBig) - kBig) == a);
}
P2PHD_HD bool is_integral(double v) {
  constexpr double kBig = 4503599627370496.0;  // 2^52
  const double a = fabs(v);
  return (a >= kBig) | (((a + kBig) - kBig) == a);
}


#if defined(__CUDACC__)
// ---------------------------------------------------------------------------------------------------
// Device side: a thread owns V adjacent pixels of one image (flat index p0..p0+V-1 within the image).

// V values of T as one aligned unit, so a group loads/stores with 16-byte (or wider, split) accesses.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Loads p[0..V) with wide loads when p is aligned to the pack, else element by element.
template <typename T, int V>
__device__ __forceinline__ void load_group(const T* __restrict__ p, T (&out)[V]) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T, V>) == 0) {
    const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
P2PHD_UNROLL
    for (int i = 0; i < V; ++i) out[i] = pk.v[i];
  } else {
P2PHD_UNROLL
    for (int i = 0; i < V; ++i) out[i] = p[i];
  }
}

// Stores the first `valid` of v (all V with one wide store when possible).
template <typename U, int V, typename I>
__device__ __forceinline__ void store_group(U* __restrict__ p, const U (&v)[V], I valid) {
  if (valid >= V && reinterpret_cast<uintptr_t>(p) % sizeof(Pack<U, V>) == 0) {
    Pack<U, V> pk;
P2PHD_UNROLL
    for (int i = 0; i < V; ++i) pk.v[i] = v[i];
    *reinterpret_cast<Pack<U, V>*>(p) = pk;
  } else {
P2PHD_UNROLL
    for (int i = 0; i < V; ++i)
      if (i < valid) p[i] = v[i];
  }
}

// Boundary flags of pixels p0..p0+V-1 of image `img` ([H,W] contiguous ids); lanes at or past H*W get
// false. When the group lies in one row (the common case), the row and the rows above and below are read
// with wide loads and the two outside neighbours with scalar loads; neighbouring threads share these
// lines through L1/L2, so the ids come from DRAM about once.
template <typename T, int V, typename I>
__device__ __forceinline__ void group_edges_at(const T* __restrict__ img, I H, I W, I p0, bool (&e)[V]) {
  const I y = p0 / W, x0 = p0 - y * W;
  const T* cur = img + y * W;
  if (x0 + V <= W) {
    const T* up = y > 0 ? cur - W : cur;
    const T* down = y + 1 < H ? cur + W : cur;
    T c[V], u[V], d[V];
    load_group(cur + x0, c);
    load_group(up + x0, u);
    load_group(down + x0, d);
    const T left = x0 > 0 ? cur[x0 - 1] : c[0];
    const T right = x0 + V < W ? cur[x0 + V] : c[V - 1];
    group_edges(c, left, right, u, d, e);
  } else {
    // The group wraps into the next row (W not a multiple of V) or runs past the end of the image.
    const I HW = H * W;
P2PHD_UNROLL
    for (int i = 0; i < V; ++i) {
      const I p = p0 + i;
      e[i] = false;
      if (p < HW) {
        const I yy = p / W, xx = p - yy * W;
        const T* row = img + yy * W;
        e[i] = pixel_edge(yy > 0 ? row - W : row, row, yy + 1 < H ? row + W : row, xx, W);
      }
    }
  }
}
#endif  // __CUDACC__

}  // namespace boundary
}  // namespace pix2pixhd_fast
