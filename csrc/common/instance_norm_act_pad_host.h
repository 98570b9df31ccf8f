// Host-side code shared by the CPU and CUDA kernels of instance_norm_act_pad / instance_norm_act_pad_backward:
// input validation on top of instance_norm_act's (each kernel adds its own device check) and the outputs.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <optional>
#include <tuple>

#include "common/instance_norm_act_host.h"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace pad_host {

using norm_host::acc_type_of;

inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// Reflection reads index 1 and n-2 mirrored: a pad of p needs p < n on both axes (ReflectionPad2d's rule).
inline void check_pad(const at::Tensor& x, int64_t pad, const char* op) {
  TORCH_CHECK(pad >= 0, op, ": pad must be >= 0, got ", num(pad));
  if (pad == 0) return;
  TORCH_CHECK(pad < x.size(2) && pad < x.size(3), op, ": reflection padding needs pad < H and pad < W, got pad ",
              num(pad), " for x of shape ", dims(x.sizes()));
}

inline void check_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                          double eps, int64_t pad) {
  constexpr const char* op = "instance_norm_act_pad";
  norm_host::check_x(x, op);
  norm_host::check_affine(x, weight, "weight");
  norm_host::check_affine(x, bias, "bias");
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", num(eps));
  check_pad(x, pad, op);
  if (!given(residual)) return;
  TORCH_CHECK(residual->sizes() == x.sizes(), op, ": residual shape ", dims(residual->sizes()),
              " must equal x shape ", dims(x.sizes()));
  TORCH_CHECK(residual->scalar_type() == x.scalar_type(), op, ": residual dtype ", residual->scalar_type(),
              " must equal x dtype ", x.scalar_type());
  check_same_device(x, "x", *residual, "residual");
}

inline void check_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                           const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, int64_t pad) {
  constexpr const char* op = "instance_norm_act_pad_backward";
  norm_host::check_x(x, op);
  check_pad(x, pad, op);
  check_float_input(grad_y, "grad_y");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == N && grad_y.size(1) == C && grad_y.size(2) == H + 2 * pad &&
                  grad_y.size(3) == W + 2 * pad,
              op, ": grad_y must have shape [N,C,H+2*pad,W+2*pad] = [", num(N), ", ", num(C), ", ",
              num(H + 2 * pad), ", ", num(W + 2 * pad), "], got ", dims(grad_y.sizes()));
  check_same_device(x, "x", grad_y, "grad_y");
  const auto acc = acc_type_of(x);
  for (const auto* t : {&mean, &rstd}) {
    const char* name = t == &mean ? "mean" : "rstd";
    TORCH_CHECK(t->scalar_type() == acc, op, ": ", name, " must be ", acc == at::kDouble ? "float64" : "float32",
                " (the forward's statistics for x of ", x.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 2 && t->size(0) == N && t->size(1) == C, op, ": ", name, " must have shape [N,C] = [",
                num(N), ",", num(C), "], got ", dims(t->sizes()));
    check_same_device(x, "x", *t, name);
  }
  norm_host::check_affine(x, weight, "weight");
  norm_host::check_affine(x, bias, "bias");
}

// Forward outputs: y [N,C,H+2p,W+2p] in x's memory format, mean/rstd [N,C] in the accumulation type. `done` when
// there is nothing for a kernel to do (no planes, or planes without pixels: their statistics are filled here,
// variance taken as 0 as instance_norm_act does; the padded output is then empty too).
struct ForwardOutputs {
  at::Tensor y, mean, rstd;
  bool done;
};

inline ForwardOutputs forward_outputs(const at::Tensor& x, int64_t pad, double eps) {
  const int64_t N = x.size(0), C = x.size(1);
  const auto fmt = memory_format_of(x);
  ForwardOutputs o{at::empty({N, C, x.size(2) + 2 * pad, x.size(3) + 2 * pad}, x.options(), fmt),
                   at::empty({N, C}, x.options().dtype(acc_type_of(x))),
                   at::empty({N, C}, x.options().dtype(acc_type_of(x))), false};
  if (N * C == 0) {
    o.done = true;
  } else if (x.size(2) * x.size(3) == 0) {
    o.mean.zero_();
    o.rstd.fill_(1.0 / std::sqrt(eps));
    o.done = true;
  }
  return o;
}

// Backward outputs in x's memory format: grad_x (zeros when not asked for: outputs are never undefined) and
// grad_residual (empty when not asked for), and which of the four gradients to compute.
struct BackwardOutputs {
  at::Tensor gx, gres;
  bool need_x, need_w, need_b, need_r;
  bool any() const { return need_x || need_w || need_b || need_r; }
};

inline BackwardOutputs backward_outputs(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias, std::array<bool, 4> mask) {
  const auto fmt = memory_format_of(x);
  BackwardOutputs o{at::empty(x.sizes(), x.options(), fmt),
                    mask[3] ? at::empty(x.sizes(), x.options(), fmt) : at::empty({0}, x.options()),
                    mask[0], given(weight) && mask[1], given(bias) && mask[2], mask[3]};
  if (!o.need_x) o.gx.zero_();
  return o;
}

}  // namespace pad_host
}  // namespace pix2pixhd_fast
