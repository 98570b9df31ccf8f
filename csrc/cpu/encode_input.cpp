// encode_input on the CPU: one-hot(label) ++ boundary(inst) ++ feat written in one pass.
//
// Work goes in blocks of whole rows of one image. For a block, the labels are converted (and range
// checked) into a small int32 index buffer that stays in L1; then
//  - NCHW: each channel plane's slice of the block is written as one sequential stream (the select
//    `idx == c ? 1 : 0` vectorises), then the boundary rows, then the feature rows;
//  - NHWC: each pixel's channel vector is written in turn (one-hot, edge), then the feature channels of the
//    same block while its output lines are still in cache.
// Every output element is stored exactly once; no zero-fill pass.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/boundary.cuh"
#include "common/edge_dispatch.h"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

constexpr int64_t kBlockPixels = 2048;  // per block: index buffer 8 KB, each plane slice <= 16 KB
constexpr int64_t kTaskPixels = 4096;   // parallel_for grain, in pixels

template <typename T>
constexpr bool is_float_id = std::is_floating_point_v<T> || std::is_same_v<T, c10::Half> ||
                             std::is_same_v<T, c10::BFloat16>;

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct Encode {
  at::Tensor labels;  // [N,H,W] contiguous
  at::Tensor ids;     // [N,H,W] contiguous, or undefined
  at::Tensor feat;    // [N,Cf,H,W] any strides, or undefined
  int64_t N, H, W, C, label_nc, Cf;
  char* out;
};

template <typename L>
[[noreturn]] void report_bad_label(const L* lab, int64_t count, int64_t label_nc) {
  for (int64_t p = 0; p < count; ++p) {
    if constexpr (is_float_id<L>) {
      const acc_of<L> v = static_cast<acc_of<L>>(lab[p]);
      TORCH_CHECK(boundary::is_integral(v), "label holds fractional values (found ", num(v),
                  "); ids must be integers (use an integer dtype)");
      TORCH_CHECK(v >= 0 && v < static_cast<acc_of<L>>(label_nc), "label values must lie in [0, label_nc=",
                  num(label_nc), "), found ", num(v));
    } else {
      const int64_t v = static_cast<int64_t>(lab[p]);
      TORCH_CHECK(v >= 0 && v < label_nc, "label values must lie in [0, label_nc=", num(label_nc), "), found ", num(v));
    }
  }
  TORCH_CHECK(false, "encode_input: internal error in the label check");
}

// Labels -> class index, checked in the same loop (no extra pass). Branch-free with an int accumulator so
// the loop vectorises; the error path rescans the block to report the first bad value.
template <typename L>
void labels_to_index(const L* lab, int64_t count, int64_t label_nc, int32_t* __restrict__ idx) {
  if constexpr (is_float_id<L>) {
    using A = acc_of<L>;
    const A hi = static_cast<A>(label_nc);
    int ok = 1;
    for (int64_t p = 0; p < count; ++p) {
      const A v = static_cast<A>(lab[p]);
      const bool good = (v >= 0) & (v < hi) & boundary::is_integral(v);
      ok &= static_cast<int>(good);
      idx[p] = static_cast<int32_t>(good ? v : A(0));
    }
    if (!ok) report_bad_label(lab, count, label_nc);
  } else {
    // 0 <= v < label_nc (< 2^31) as unsigned 64-bit: the high half is 0 and the low half < label_nc.
    // Written with 32-bit compares, which baseline x86-64 vectorises (64-bit compares it does not).
    const uint32_t nc = static_cast<uint32_t>(label_nc);
    uint32_t bad = 0;
    for (int64_t p = 0; p < count; ++p) {
      const uint64_t v = static_cast<uint64_t>(static_cast<int64_t>(lab[p]));
      bad |= static_cast<uint32_t>(v >> 32) | static_cast<uint32_t>(static_cast<uint32_t>(v) >= nc);
      idx[p] = static_cast<int32_t>(v);
    }
    if (bad) report_bad_label(lab, count, label_nc);
  }
}

template <typename T>
void check_integral_row(const T* row, int64_t W) {
  if constexpr (is_float_id<T>) {
    int ok = 1;  // int, not bool: a bool accumulator stops GCC vectorising the loop
    for (int64_t x = 0; x < W; ++x) ok &= static_cast<int>(boundary::is_integral(static_cast<acc_of<T>>(row[x])));
    if (!ok) {
      for (int64_t x = 0; x < W; ++x) {
        const acc_of<T> v = static_cast<acc_of<T>>(row[x]);
        TORCH_CHECK(boundary::is_integral(v), "inst holds fractional values (found ", num(v),
                    "); ids must be integers (use an integer dtype)");
      }
    }
  }
}

// Boundary rows y0..y1 of image n into out (row stride W), as `one`/0 of type U.
template <typename U>
void edge_rows(const Encode& e, int64_t n, int64_t y0, int64_t y1, U one, U* out) {
  P2PHD_DISPATCH_ID_TYPES(e.ids.scalar_type(), "encode_input_cpu", [&] {
    const scalar_t* img = e.ids.const_data_ptr<scalar_t>() + n * e.H * e.W;
    for (int64_t y = y0; y < y1; ++y) {
      const scalar_t* cur = img + y * e.W;
      const scalar_t* up = y > 0 ? cur - e.W : cur;
      const scalar_t* down = y + 1 < e.H ? cur + e.W : cur;
      boundary::boundary_row(up, cur, down, e.W, one, out + (y - y0) * e.W);
      check_integral_row(cur, e.W);
    }
  });
}

// Feature channels of rows y0..y1 into NCHW planes starting at `dst` (plane stride H*W, row stride W).
template <typename O>
void feat_rows_nchw(const Encode& e, int64_t n, int64_t y0, int64_t y1, O* dst) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.feat.scalar_type(), "encode_input_cpu", [&] {
    const scalar_t* f = e.feat.const_data_ptr<scalar_t>();
    const int64_t sn = e.feat.stride(0), sc = e.feat.stride(1), sh = e.feat.stride(2), sw = e.feat.stride(3);
    for (int64_t k = 0; k < e.Cf; ++k) {
      for (int64_t y = y0; y < y1; ++y) {
        const scalar_t* src = f + n * sn + k * sc + y * sh;
        O* o = dst + k * e.H * e.W + (y - y0) * e.W;
        if (sw == 1) {
          for (int64_t x = 0; x < e.W; ++x) o[x] = convert_feat<O>(src[x]);
        } else {
          for (int64_t x = 0; x < e.W; ++x) o[x] = convert_feat<O>(src[x * sw]);
        }
      }
    }
  });
}

// Feature channels of rows y0..y1 into NHWC pixel vectors: dst points at the first feature channel of
// the block's first pixel (pixel stride C).
template <typename O>
void feat_pixels_nhwc(const Encode& e, int64_t n, int64_t y0, int64_t y1, O* dst) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.feat.scalar_type(), "encode_input_cpu", [&] {
    const scalar_t* f = e.feat.const_data_ptr<scalar_t>();
    const int64_t sn = e.feat.stride(0), sc = e.feat.stride(1), sh = e.feat.stride(2), sw = e.feat.stride(3);
    for (int64_t y = y0; y < y1; ++y) {
      for (int64_t x = 0; x < e.W; ++x) {
        const scalar_t* src = f + n * sn + y * sh + x * sw;
        O* o = dst + ((y - y0) * e.W + x) * e.C;
        for (int64_t k = 0; k < e.Cf; ++k) o[k] = convert_feat<O>(src[k * sc]);
      }
    }
  });
}

template <typename K>
void encode_block(const Encode& e, bool channels_last, int64_t n, int64_t y0, int64_t y1, int32_t* idx,
                  uint8_t* edge) {
  using U = typename K::U;
  using O = typename K::O;
  constexpr U one = K::kOne;
  const int64_t HW = e.H * e.W, p0 = y0 * e.W, count = (y1 - y0) * e.W;
  const bool has_inst = e.ids.defined();
  P2PHD_DISPATCH_ID_TYPES(e.labels.scalar_type(), "encode_input_cpu", [&] {
    labels_to_index(e.labels.const_data_ptr<scalar_t>() + n * HW + p0, count, e.label_nc, idx);
  });
  if (!channels_last) {
    U* base = reinterpret_cast<U*>(e.out) + n * e.C * HW + p0;
    for (int64_t c = 0; c < e.label_nc; ++c) {
      U* o = base + c * HW;
      const int32_t cc = static_cast<int32_t>(c);
      for (int64_t i = 0; i < count; ++i) o[i] = idx[i] == cc ? one : U(0);
    }
    if (has_inst) edge_rows<U>(e, n, y0, y1, one, base + e.label_nc * HW);
    if (e.Cf) feat_rows_nchw<O>(e, n, y0, y1, reinterpret_cast<O*>(base + (e.label_nc + has_inst) * HW));
  } else {
    U* base = reinterpret_cast<U*>(e.out) + (n * HW + p0) * e.C;
    if (has_inst) edge_rows<uint8_t>(e, n, y0, y1, 1, edge);
    const int64_t nc = e.label_nc;
    for (int64_t i = 0; i < count; ++i) {
      U* o = base + i * e.C;
      const int32_t l = idx[i];
      for (int32_t c = 0; c < nc; ++c) o[c] = c == l ? one : U(0);
      if (has_inst) o[nc] = edge[i] ? one : U(0);
    }
    if (e.Cf) feat_pixels_nhwc<O>(e, n, y0, y1, reinterpret_cast<O*>(base + nc + has_inst));
  }
}

}  // namespace

at::Tensor encode_input_cpu(const at::Tensor& label, const std::optional<at::Tensor>& inst, int64_t label_nc,
                            const std::optional<at::Tensor>& feat, at::ScalarType dtype, bool channels_last) {
  TORCH_CHECK(label.device().is_cpu(), "encode_input_cpu: label must be a CPU tensor, got ", label.device().str());
  TORCH_CHECK(label_nc > 0 && label_nc <= (int64_t{1} << 30), "label_nc must be a positive int, got ",
              num(label_nc));
  Encode e;
  e.labels = check_ids(label, "label");
  e.N = e.labels.size(0), e.H = e.labels.size(1), e.W = e.labels.size(2);
  if (inst.has_value() && inst->defined()) {
    check_same_device(label, "label", *inst, "inst");
    e.ids = check_ids(*inst, "inst");
    TORCH_CHECK(e.ids.sizes() == e.labels.sizes(), "inst shape ", dims(inst->sizes()), " does not match label shape ",
                dims(label.sizes()));
  }
  e.Cf = 0;
  if (feat.has_value() && feat->defined()) {
    check_same_device(label, "label", *feat, "feat");
    check_float_input(*feat, "feat");
    TORCH_CHECK(feat->dim() == 4 && feat->size(0) == e.N && feat->size(2) == e.H && feat->size(3) == e.W,
                "feat must have shape [N,Cf,H,W] = [", num(e.N), ",Cf,", num(e.H), ",", num(e.W), "], got ",
                dims(feat->sizes()));
    e.feat = *feat;
    e.Cf = feat->size(1);
  }
  dispatch_out_kind</*kAllowByte=*/false>(dtype, "encode_input", [](auto) {});
  e.label_nc = label_nc;
  e.C = label_nc + (e.ids.defined() ? 1 : 0) + e.Cf;
  at::Tensor out = at::empty({e.N, e.C, e.H, e.W}, label.options().dtype(dtype).memory_format(
                                                         channels_last ? at::MemoryFormat::ChannelsLast
                                                                       : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  e.out = static_cast<char*>(out.data_ptr());

  dispatch_out_kind<false>(dtype, "encode_input", [&](auto kind) {
    using K = decltype(kind);
    const int64_t block_rows = std::max<int64_t>(1, kBlockPixels / e.W);
    const int64_t grain = std::max<int64_t>(1, kTaskPixels / e.W);
    at::parallel_for(0, e.N * e.H, grain, [&](int64_t r0, int64_t r1) {
      const int64_t buf = std::min(block_rows, r1 - r0) * e.W;
      std::vector<int32_t> idx(buf);
      std::vector<uint8_t> edge(channels_last && e.ids.defined() ? buf : 0);
      for (int64_t r = r0; r < r1;) {
        const int64_t n = r / e.H, y0 = r % e.H;
        const int64_t y1 = std::min({e.H, y0 + block_rows, y0 + (r1 - r)});
        encode_block<K>(e, channels_last, n, y0, y1, idx.data(), edge.data());
        r += y1 - y0;
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CPU, m) { m.impl("encode_input", &encode_input_cpu); }

}  // namespace pix2pixhd_fast
