// encode_input on CUDA: one-hot(label) ++ boundary(inst) ++ feat written by ONE kernel, each output
// element stored once. The output dominates the bytes ((label_nc + 1 + Cf) * H * W elements against one
// label and one id per pixel), so both layouts are built around full-width coalesced stores:
//  - NCHW: a thread owns V adjacent pixels (16 bytes of output per plane) and writes every channel plane
//    at stride H*W; a warp's store to one plane is 512 contiguous bytes.
//  - NHWC: a block stages a tile of pixels (class index, edge and feature bits) in shared memory, then
//    its threads write the tile's contiguous output as consecutive 16-byte chunks (a warp stores 512
//    contiguous bytes).
// Labels, ids and features keep their own dtypes; the kernels branch on them at run time (a uniform
// branch), which keeps the number of template instances small. Out-of-range labels give an all-zero
// one-hot (the Python wrapper checks the range when check=True; a kernel never asserts).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "common/boundary.cuh"
#include "common/edge_dispatch.h"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

constexpr int kThreads = 256;

struct EncodeParams {
  const void* label;
  const void* inst;  // nullptr without an instance map
  const void* feat;  // nullptr without features
  at::ScalarType label_type, inst_type, feat_type;
  int64_t fs_n, fs_c, fs_h, fs_w;  // feat strides (any layout)
  int32_t label_nc, has_inst, Cf, C;
};

template <typename T>
struct Tag {
  using type = T;
};

// f(Tag<T>{}) for the element type of a feature map (a float dtype).
template <typename F>
__device__ __forceinline__ void with_feat_type(at::ScalarType st, F&& f) {
  switch (st) {
    case at::ScalarType::Half:
      f(Tag<c10::Half>{});
      break;
    case at::ScalarType::BFloat16:
      f(Tag<c10::BFloat16>{});
      break;
    case at::ScalarType::Float:
      f(Tag<float>{});
      break;
    default:
      f(Tag<double>{});
      break;
  }
}

// f(Tag<T>{}) for the element type of an id map (label or inst): an integer dtype, or a float one.
template <typename F>
__device__ __forceinline__ void with_id_type(at::ScalarType st, F&& f) {
  switch (st) {
    case at::ScalarType::Byte:
      f(Tag<uint8_t>{});
      break;
    case at::ScalarType::Char:
      f(Tag<int8_t>{});
      break;
    case at::ScalarType::Short:
      f(Tag<int16_t>{});
      break;
    case at::ScalarType::Int:
      f(Tag<int32_t>{});
      break;
    case at::ScalarType::Long:
      f(Tag<int64_t>{});
      break;
    default:
      with_feat_type(st, f);
      break;
  }
}

// Class index of a label value, or -1 (no one-hot bit) when it is out of range or not integral.
template <typename L>
__device__ __forceinline__ int class_index(L v, int label_nc) {
  if constexpr (std::is_integral_v<L>) {
    const int64_t a = static_cast<int64_t>(v);
    return (a >= 0 && a < label_nc) ? static_cast<int>(a) : -1;
  } else {
    using A = std::conditional_t<std::is_same_v<L, double>, double, float>;
    const A a = static_cast<A>(v);
    return (a >= A(0) && a < static_cast<A>(label_nc) && a == floor(a)) ? static_cast<int>(a) : -1;
  }
}

template <typename I>
__device__ __forceinline__ int label_at(const EncodeParams& P, I p) {
  int l = -1;
  with_id_type(P.label_type, [&](auto tag) {
    using L = typename decltype(tag)::type;
    l = class_index(static_cast<const L*>(P.label)[p], P.label_nc);
  });
  return l;
}

template <int V, typename I>
__device__ __forceinline__ void labels_of_group(const EncodeParams& P, I off, I valid, int (&lab)[V]) {
  with_id_type(P.label_type, [&](auto tag) {
    using L = typename decltype(tag)::type;
    const L* src = static_cast<const L*>(P.label) + off;
    L v[V];
    if (valid >= V) {
      boundary::load_group(src, v);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] = i < valid ? src[i] : L(0);
    }
#pragma unroll
    for (int i = 0; i < V; ++i) lab[i] = i < valid ? class_index(v[i], P.label_nc) : -1;
  });
}

// ---------------------------------------------------------------------------------------------------
// NCHW: thread = V adjacent pixels of one image, all C channels.

template <typename K, int V, typename I>
__global__ void __launch_bounds__(kThreads)
    encode_nchw_kernel(EncodeParams P, typename K::U* __restrict__ out, I N, I H, I W, I groups_per_image) {
  using U = typename K::U;
  using O = typename K::O;
  const I g = static_cast<I>(blockIdx.x) * kThreads + static_cast<I>(threadIdx.x);
  if (g >= N * groups_per_image) return;
  const I n = g / groups_per_image;
  const I p0 = (g - n * groups_per_image) * V;
  const I HW = H * W;
  const I valid = HW - p0;  // >= V except in the last group of an image
  U* o = out + n * P.C * HW + p0;

  int lab[V];
  labels_of_group<V>(P, n * HW + p0, valid, lab);
  for (int c = 0; c < P.label_nc; ++c) {
    U v[V];
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = lab[i] == c ? K::kOne : U(0);
    boundary::store_group(o + c * HW, v, valid);
  }
  if (P.has_inst) {
    bool e[V];
    with_id_type(P.inst_type, [&](auto tag) {
      using T = typename decltype(tag)::type;
      boundary::group_edges_at<T, V, I>(static_cast<const T*>(P.inst) + n * HW, H, W, p0, e);
    });
    U v[V];
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = e[i] ? K::kOne : U(0);
    boundary::store_group(o + P.label_nc * HW, v, valid);
  }
  if (P.Cf > 0) {
    with_feat_type(P.feat_type, [&](auto tag) {
      using F = typename decltype(tag)::type;
      const F* fb = static_cast<const F*>(P.feat) + static_cast<int64_t>(n) * P.fs_n;
      const I y0 = p0 / W, x0 = p0 - y0 * W;
      const bool one_row = valid >= V && x0 + V <= W;
      U* of = o + (P.label_nc + P.has_inst) * HW;
      for (int k = 0; k < P.Cf; ++k) {
        F f[V];
        const F* fk = fb + k * P.fs_c;
        if (one_row) {
          const F* src = fk + y0 * P.fs_h + x0 * P.fs_w;
          if (P.fs_w == 1) {
            boundary::load_group(src, f);
          } else {
#pragma unroll
            for (int i = 0; i < V; ++i) f[i] = src[i * P.fs_w];
          }
        } else {
#pragma unroll
          for (int i = 0; i < V; ++i) {
            f[i] = F(0);
            if (i < valid) {
              const I p = p0 + i, y = p / W, x = p - y * W;
              f[i] = fk[y * P.fs_h + x * P.fs_w];
            }
          }
        }
        U v[V];
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] = bits_of<U>(convert_feat<O>(f[i]));
        boundary::store_group(of + k * HW, v, valid);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// NHWC: a block owns a tile of PB consecutive pixels (flat over N*H*W), whose output is PB*C consecutive
// elements. Phase 1, one thread per pixel (coalesced reads in the inputs' own dtypes): the class index and
// the bit patterns of the extra channels (edge, features) go to shared memory. Phase 2: consecutive
// threads write consecutive 16-byte chunks of the tile (a warp stores 512 contiguous bytes) from shared
// memory; a chunk's (pixel, channel) advances incrementally, so there is no division per element.

// Shared memory of one NHWC tile: int32 class index + (C - label_nc) extra channels per pixel.
inline int64_t nhwc_smem_bytes(int64_t pb, int64_t extra, int64_t elem) { return pb * (4 + extra * elem); }
constexpr int64_t kNhwcSmem = 48 * 1024;  // no opt-in needed below this

template <typename K, typename I>
__global__ void __launch_bounds__(kThreads)
    encode_nhwc_kernel(EncodeParams P, typename K::U* __restrict__ out, I H, I W, I npix, int PB,
                       I step_pix, int step_c) {
  using U = typename K::U;
  using O = typename K::O;
  constexpr int VE = 16 / sizeof(U);
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s_lab = reinterpret_cast<int32_t*>(smem);
  U* s_extra = reinterpret_cast<U*>(smem + static_cast<int64_t>(PB) * sizeof(int32_t));  // [C - label_nc][PB]
  const int nx = P.C - P.label_nc;
  const I pix0 = static_cast<I>(blockIdx.x) * PB;
  const I left = npix - pix0;
  const int tile = left < PB ? static_cast<int>(left) : PB;
  const I HW = H * W;

  for (int t = threadIdx.x; t < tile; t += kThreads) {
    const I p = pix0 + t;
    s_lab[t] = label_at(P, p);
    if (nx > 0) {
      const I n = p / HW, q = p - n * HW, y = q / W, x = q - y * W;
      if (P.has_inst) {
        bool e = false;
        with_id_type(P.inst_type, [&](auto tag) {
          using T = typename decltype(tag)::type;
          const T* row = static_cast<const T*>(P.inst) + n * HW + y * W;
          e = boundary::pixel_edge(y > 0 ? row - W : row, row, y + 1 < H ? row + W : row, x, W);
        });
        s_extra[t] = e ? K::kOne : U(0);
      }
      if (P.Cf > 0) {
        with_feat_type(P.feat_type, [&](auto tag) {
          using F = typename decltype(tag)::type;
          const F* src = static_cast<const F*>(P.feat) + static_cast<int64_t>(n) * P.fs_n +
                         static_cast<int64_t>(y) * P.fs_h + static_cast<int64_t>(x) * P.fs_w;
          for (int k = 0; k < P.Cf; ++k) {
            s_extra[(P.has_inst + k) * PB + t] = bits_of<U>(convert_feat<O>(src[k * P.fs_c]));
          }
        });
      }
    }
  }
  __syncthreads();

  const I tile_elems = static_cast<I>(tile) * P.C;
  U* tout = out + pix0 * P.C;
  I le = static_cast<I>(threadIdx.x) * VE;  // this thread's first chunk, relative to the tile
  if (le >= tile_elems) return;
  I pix = le / P.C;
  int c = static_cast<int>(le - pix * P.C);
  for (; le < tile_elems; le += static_cast<I>(kThreads) * VE) {
    U v[VE];
    I pp = pix;
    int cc = c;
#pragma unroll
    for (int i = 0; i < VE; ++i) {
      U val = U(0);
      if (le + i < tile_elems) {
        val = cc < P.label_nc ? (cc == s_lab[pp] ? K::kOne : U(0)) : s_extra[(cc - P.label_nc) * PB + pp];
      }
      v[i] = val;
      if (++cc == P.C) {
        cc = 0;
        ++pp;
      }
    }
    boundary::store_group(tout + le, v, tile_elems - le);
    // Next chunk: kThreads * VE elements on = step_pix pixels + step_c channels.
    pix += step_pix;
    c += step_c;
    if (c >= P.C) {
      c -= P.C;
      ++pix;
    }
  }
}

template <typename K, typename I>
void launch(const EncodeParams& P, at::Tensor& out, int64_t N, int64_t H, int64_t W, bool channels_last) {
  using U = typename K::U;
  U* dst = static_cast<U*>(out.data_ptr());
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (channels_last) {
    constexpr int VE = 16 / sizeof(U);
    const int64_t extra = P.C - P.label_nc;
    // Pixels per tile: kThreads, fewer (a multiple of 16, so tiles stay 16-byte aligned) when many
    // feature channels would not fit the shared memory.
    int64_t pb = kThreads;
    while (pb > 16 && nhwc_smem_bytes(pb, extra, sizeof(U)) > kNhwcSmem) pb -= 16;
    if (nhwc_smem_bytes(pb, extra, sizeof(U)) > kNhwcSmem) {
      // Too many feature channels for a 16-pixel tile (over ~760 at 4 bytes): the NCHW kernel into a
      // temporary, then one layout copy. Rare (pix2pixHD has 3 feature channels); never an error.
      at::Tensor tmp = at::empty(out.sizes(), out.options());
      launch<K, I>(P, tmp, N, H, W, /*channels_last=*/false);
      out.copy_(tmp);
      return;
    }
    const int64_t npix = N * H * W;
    const int64_t blocks = (npix + pb - 1) / pb;
    const int64_t step = int64_t{kThreads} * VE;
    encode_nhwc_kernel<K, I><<<blocks, kThreads, nhwc_smem_bytes(pb, extra, sizeof(U)), stream>>>(
        P, dst, H, W, npix, static_cast<int>(pb), static_cast<I>(step / P.C), static_cast<int>(step % P.C));
  } else {
    constexpr int V = 16 / sizeof(U);
    const int64_t gpi = (H * W + V - 1) / V;
    const int64_t blocks = (N * gpi + kThreads - 1) / kThreads;
    encode_nchw_kernel<K, V, I><<<blocks, kThreads, 0, stream>>>(P, dst, N, H, W, gpi);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor encode_input_cuda(const at::Tensor& label, const std::optional<at::Tensor>& inst, int64_t label_nc,
                             const std::optional<at::Tensor>& feat, at::ScalarType dtype, bool channels_last) {
  TORCH_CHECK(label.is_cuda(), "encode_input_cuda: label must be a CUDA tensor, got ", label.device().str());
  TORCH_CHECK(label_nc > 0 && label_nc <= (int64_t{1} << 30), "label_nc must be a positive int, got ",
              num(label_nc));
  const c10::cuda::CUDAGuard guard(label.device());
  // check_ids admits exactly the id dtypes with_id_type dispatches (never uint16/32/64).
  const at::Tensor labels = check_ids(label, "label");
  const int64_t N = labels.size(0), H = labels.size(1), W = labels.size(2);
  at::Tensor ids, f;
  if (inst.has_value() && inst->defined()) {
    check_same_device(label, "label", *inst, "inst");
    ids = check_ids(*inst, "inst");
    TORCH_CHECK(ids.sizes() == labels.sizes(), "inst shape ", dims(inst->sizes()), " does not match label shape ",
                dims(label.sizes()));
  }
  if (feat.has_value() && feat->defined()) {
    check_same_device(label, "label", *feat, "feat");
    check_float_input(*feat, "feat");
    TORCH_CHECK(feat->dim() == 4 && feat->size(0) == N && feat->size(2) == H && feat->size(3) == W,
                "feat must have shape [N,Cf,H,W] = [", num(N), ",Cf,", num(H), ",", num(W), "], got ",
                dims(feat->sizes()));
    f = *feat;
  }
  dispatch_out_kind</*kAllowByte=*/false>(dtype, "encode_input", [](auto) {});
  const int64_t Cf = f.defined() ? f.size(1) : 0;
  const int64_t C = label_nc + (ids.defined() ? 1 : 0) + Cf;
  TORCH_CHECK(C <= std::numeric_limits<int32_t>::max(), "encode_input: too many output channels (", num(C), ")");
  at::Tensor out = at::empty({N, C, H, W}, labels.options().dtype(dtype).memory_format(
                                                channels_last ? at::MemoryFormat::ChannelsLast
                                                              : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;

  EncodeParams P{};
  P.label = labels.const_data_ptr();
  P.label_type = labels.scalar_type();
  P.inst = ids.defined() ? ids.const_data_ptr() : nullptr;
  P.inst_type = ids.defined() ? ids.scalar_type() : at::kInt;
  P.feat = f.defined() ? f.const_data_ptr() : nullptr;
  P.feat_type = f.defined() ? f.scalar_type() : at::kFloat;
  if (f.defined()) {
    P.fs_n = f.stride(0), P.fs_c = f.stride(1), P.fs_h = f.stride(2), P.fs_w = f.stride(3);
  }
  P.label_nc = static_cast<int32_t>(label_nc);
  P.has_inst = ids.defined() ? 1 : 0;
  P.Cf = static_cast<int32_t>(Cf);
  P.C = static_cast<int32_t>(C);

  // 32-bit index math when every flat output index, plus the NHWC kernel's one-step overshoot past a
  // tile (kThreads * 16 bytes = at most 2048 elements), fits.
  const bool small = out.numel() + 4096 < std::numeric_limits<int32_t>::max();
  dispatch_out_kind<false>(dtype, "encode_input", [&](auto kind) {
    using K = decltype(kind);
    if (small) {
      launch<K, int32_t>(P, out, N, H, W, channels_last);
    } else {
      launch<K, int64_t>(P, out, N, H, W, channels_last);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CUDA, m) { m.impl("encode_input", &encode_input_cuda); }

}  // namespace pix2pixhd_fast
