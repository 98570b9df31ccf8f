// Host-side code shared by the CPU and CUDA kernels of instance_norm_act / instance_norm_act_backward:
// input validation (each kernel adds its own device check) and the forward's outputs. ATen-side, host-only.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace norm_host {

// Statistics (mean, rstd) are kept in the accumulation type: float32, float64 for float64 x.
inline at::ScalarType acc_type_of(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_affine(const at::Tensor& x, const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value() || !t->defined()) return;
  check_float_input(*t, name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), "instance_norm_act: ", name,
              " must have shape [C] = [", num(x.size(1)), "], got ", dims(t->sizes()));
  check_same_device(x, "x", *t, name);
}

inline void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [N,C,H,W], got ", dims(x.sizes()));
  check_float_input(x, "x");
}

inline void check_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps) {
  check_x(x, "instance_norm_act");
  check_affine(x, weight, "weight");
  check_affine(x, bias, "bias");
  TORCH_CHECK(eps >= 0, "instance_norm_act: eps must be >= 0, got ", num(eps));
}

inline void check_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                           const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias) {
  check_x(x, "instance_norm_act_backward");
  check_float_input(grad_y, "grad_y");
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "instance_norm_act_backward: grad_y shape ", dims(grad_y.sizes()),
              " must equal x shape ", dims(x.sizes()));
  check_same_device(x, "x", grad_y, "grad_y");
  const int64_t N = x.size(0), C = x.size(1);
  const auto acc = acc_type_of(x);
  for (const auto* t : {&mean, &rstd}) {
    const char* name = t == &mean ? "mean" : "rstd";
    TORCH_CHECK(t->scalar_type() == acc, "instance_norm_act_backward: ", name, " must be ",
                acc == at::kDouble ? "float64" : "float32", " (the forward's statistics for x of ",
                x.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 2 && t->size(0) == N && t->size(1) == C, "instance_norm_act_backward: ", name,
                " must have shape [N,C] = [", num(N), ",", num(C), "], got ", dims(t->sizes()));
    check_same_device(x, "x", *t, name);
  }
  check_affine(x, weight, "weight");
  check_affine(x, bias, "bias");
}

// weight/bias converted once to the accumulation type (they may be fp32 while x is bf16: autocast).
inline at::Tensor affine_as(const std::optional<at::Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(acc).contiguous();
}

// The forward's outputs: y like x in `fmt`, mean/rstd [N,C] in the accumulation type. Degenerate sizes are
// settled here the same way on every device; returns true when nothing is left for the kernel to compute.
inline bool forward_outputs(const at::Tensor& x, double eps, at::MemoryFormat fmt,
                            std::tuple<at::Tensor, at::Tensor, at::Tensor>& out) {
  const int64_t N = x.size(0), C = x.size(1), hw = x.size(2) * x.size(3);
  at::Tensor &y = std::get<0>(out), &mean = std::get<1>(out), &rstd = std::get<2>(out);
  y = at::empty(x.sizes(), x.options(), fmt);
  mean = at::empty({N, C}, x.options().dtype(acc_type_of(x)));
  rstd = at::empty({N, C}, x.options().dtype(acc_type_of(x)));
  if (N * C == 0) return true;
  if (hw == 0) {  // no pixels: variance taken as 0
    mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
    return true;
  }
  return false;
}

}  // namespace norm_host
}  // namespace pix2pixhd_fast
