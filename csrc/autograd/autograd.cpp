// Autograd kernels of the operator library: TORCH_LIBRARY_IMPL(pix2pixhd_fast, Autograd, m), one section
// per op, shared by every device (the forward and backward run as registered ops through the dispatcher,
// so the CPU/CUDA kernels serve eager mode and the fake kernels in pix2pixhd_fast/ops.py serve
// torch.compile and torch.export).
//
// In C++ rather than torch.library.register_autograd: the Python autograd added 35-45 us to every call
// (fwd+bwd), more than the norm kernels take at a generator's small feature maps, and a training step makes
// ~40 norm calls.
//
// One file, not one per op: scripts/dev_build.py (torch.utils.cpp_extension.load) puts every object into
// one flat folder, where autograd/<op>.cpp would collide with cpu/<op>.cpp.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

namespace pix2pixhd_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

OptTensor optional_of(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

bool requires_grad(const at::Tensor& t) { return t.requires_grad(); }
bool requires_grad(const OptTensor& t) { return given(t) && t->requires_grad(); }

// Whether a call must be recorded for backward: grad mode is on and a differentiable input requires grad.
// Otherwise the kernels run below autograd directly, without a graph node (cheaper, and an output that
// only non-differentiable inputs would mark as requiring grad stays a plain tensor).
template <typename... Ts>
bool records_graph(const Ts&... differentiable) {
  return at::GradMode::is_enabled() && (requires_grad(differentiable) || ...);
}

// Typed handle of a registered op, looked up once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// ---- instance_boundary: not differentiable ---------------------------------------------------------------
// A function of ids only. Running it below autograd gives float ids that require grad a plain output,
// instead of autograd's "no autograd kernel" fallback, which marks the output as requiring grad and warns
// in backward.

at::Tensor instance_boundary_autograd(const at::Tensor& inst, at::ScalarType dtype) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, at::ScalarType)>("pix2pixhd_fast::instance_boundary");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(inst, dtype);
}

// ---- encode_input: differentiable in feat ----------------------------------------------------------------
// The feat channels are copied through (cast to the output dtype), so feat's gradient is the matching
// channel slice of the output's gradient, cast back to feat's dtype. The one-hot and boundary channels
// depend on ids only.

at::Tensor encode(const at::Tensor& label, const OptTensor& inst, int64_t label_nc, const OptTensor& feat,
                  at::ScalarType dtype, bool channels_last) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const OptTensor&, int64_t, const OptTensor&, at::ScalarType, bool)>(
          "pix2pixhd_fast::encode_input");
  return op.call(label, inst, label_nc, feat, dtype, channels_last);
}

// Applied only when feat is given and requires grad.
class EncodeInputFunction : public torch::autograd::Function<EncodeInputFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& label, const OptTensor& inst, int64_t label_nc,
                               const OptTensor& feat, at::ScalarType dtype, bool channels_last) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // feat's channels follow the one-hot and the optional boundary channel. needs_input_grad counts the
    // given tensors only: label, [inst], feat.
    ctx->saved_data["feat_offset"] = label_nc + (given(inst) ? 1 : 0);
    ctx->saved_data["feat_edge"] = int64_t{given(inst) ? 2 : 1};
    ctx->saved_data["feat_dtype"] = feat->scalar_type();
    return {encode(label, inst, label_nc, feat, dtype, channels_last)};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    variable_list out(6);  // label, inst, label_nc, feat, dtype, channels_last
    const at::Tensor& grad = grads[0];
    auto& saved = ctx->saved_data;
    if (!grad.defined() || !ctx->needs_input_grad(saved["feat_edge"].toInt())) return out;
    const int64_t offset = saved["feat_offset"].toInt();
    out[3] = grad.narrow(1, offset, grad.size(1) - offset).to(saved["feat_dtype"].toScalarType());
    return out;
  }
};

at::Tensor encode_input_autograd(const at::Tensor& label, const OptTensor& inst, int64_t label_nc,
                                 const OptTensor& feat, at::ScalarType dtype, bool channels_last) {
  if (records_graph(feat)) return EncodeInputFunction::apply(label, inst, label_nc, feat, dtype, channels_last)[0];
  at::AutoDispatchBelowADInplaceOrView guard;
  return encode(label, inst, label_nc, feat, dtype, channels_last);
}

// ---- instance_avg_pool: differentiable in feat -----------------------------------------------------------
// The pooling is a linear map P (average over each instance, broadcast back) and P is symmetric, so the
// backward is the same op applied to the gradient. It is called with autograd, so under create_graph=True
// it is recorded and differentiated again: double backward is exact.

at::Tensor pool(const at::Tensor& feat, const at::Tensor& inst) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("pix2pixhd_fast::instance_avg_pool");
  return op.call(feat, inst);
}

class InstanceAvgPoolFunction : public torch::autograd::Function<InstanceAvgPoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& feat, const at::Tensor& inst) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({inst});
    return {pool(feat, inst)};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    // Edge 0 is feat; inst gets no gradient.
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return {at::Tensor(), at::Tensor()};
    return {pool(grads[0], ctx->get_saved_variables()[0]), at::Tensor()};
  }
};

at::Tensor instance_avg_pool_autograd(const at::Tensor& feat, const at::Tensor& inst) {
  if (records_graph(feat)) return InstanceAvgPoolFunction::apply(feat, inst)[0];
  at::AutoDispatchBelowADInplaceOrView guard;
  return pool(feat, inst);
}

// ---- instance_norm_act: differentiable in x, weight and bias ---------------------------------------------
// mean/rstd are outputs kept for the backward only (non-differentiable). The backward is the registered
// instance_norm_act_backward op, asked only for the gradients that autograd needs (output_mask).
//
// Double backward: under create_graph=True (grad mode is on inside backward) the gradients are computed
// from the reference math in ATen ops instead (norm_backward_differentiable), which autograd records, so a
// gradient of the gradients (R1 and other gradient penalties) is exact. The fused backward op keeps a node
// that refuses a double backward for callers that invoke it directly with inputs requiring grad.

// The norm's gradients from reference math in differentiable ATen ops: mean and rstd are recomputed from x
// (the saved ones are non-differentiable outputs), in fp32 (fp64 for fp64 x) as the kernels accumulate.
// grad_y and x: [N,C,H,W]; weight/bias: [C] or undefined. Gradients not in `mask` are undefined.
Tensor3 norm_backward_differentiable(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& bias, double eps, double negative_slope,
                                     std::array<bool, 3> mask) {
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xa = x.to(acc);
  const at::Tensor mean = xa.mean({2, 3}, /*keepdim=*/true);
  const at::Tensor centered = xa - mean;
  const at::Tensor rstd = at::rsqrt(centered.pow(2).mean({2, 3}, /*keepdim=*/true) + eps);
  const at::Tensor xhat = centered * rstd;
  const at::Tensor w = weight.defined() ? weight.to(acc).view({1, -1, 1, 1}) : at::Tensor();
  at::Tensor g = grad_y.to(acc);
  if (negative_slope != 1.0) {
    // The activation's slope at the pre-activation z = w * xhat + b (a.e. constant: no second-order term).
    at::Tensor z = w.defined() ? xhat * w : xhat;
    if (bias.defined()) z = z + bias.to(acc).view({1, -1, 1, 1});
    g = at::where(z.detach() > 0, g, g * negative_slope);
  }
  at::Tensor gx, gw, gb;
  if (mask[1]) gw = (g * xhat).sum({0, 2, 3}).to(weight.scalar_type());
  if (mask[2]) gb = g.sum({0, 2, 3}).to(bias.scalar_type());
  if (mask[0]) {
    const at::Tensor gxhat = w.defined() ? g * w : g;
    gx = (rstd * (gxhat - gxhat.mean({2, 3}, true) - xhat * (gxhat * xhat).mean({2, 3}, true))).to(x.scalar_type());
  }
  return {gx, gw, gb};
}

Tensor3 norm(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps, double negative_slope) {
  static const auto op = find_op<Tensor3(const at::Tensor&, const OptTensor&, const OptTensor&, double, double)>(
      "pix2pixhd_fast::instance_norm_act");
  return op.call(x, weight, bias, eps, negative_slope);
}

Tensor3 norm_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                      const OptTensor& weight, const OptTensor& bias, double negative_slope,
                      std::array<bool, 3> output_mask) {
  static const auto op =
      find_op<Tensor3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                      const OptTensor&, double, std::array<bool, 3>)>("pix2pixhd_fast::instance_norm_act_backward");
  return op.call(grad_y, x, mean, rstd, weight, bias, negative_slope, output_mask);
}

// The graph node of the backward op: reached only by a double backward, which it refuses.
class InstanceNormActBackwardFunction : public torch::autograd::Function<InstanceNormActBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const at::Tensor& grad_y, const at::Tensor& x,
                               const at::Tensor& mean, const at::Tensor& rstd, const OptTensor& weight,
                               const OptTensor& bias, double negative_slope, std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gx, gw, gb] = norm_backward(grad_y, x, mean, rstd, weight, bias, negative_slope, output_mask);
    return {gx, gw, gb};
  }

  static variable_list backward(AutogradContext* /*ctx*/, const variable_list& /*grads*/) {
    TORCH_CHECK(false,
                "pix2pixhd_fast::instance_norm_act_backward: a gradient of this op's outputs is not supported; "
                "differentiate instance_norm_act with create_graph=True instead (its double backward is exact)");
    return {};
  }
};

Tensor3 instance_norm_act_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                                            const at::Tensor& rstd, const OptTensor& weight, const OptTensor& bias,
                                            double negative_slope, std::array<bool, 3> output_mask) {
  if (!records_graph(grad_y, x, mean, rstd, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return norm_backward(grad_y, x, mean, rstd, weight, bias, negative_slope, output_mask);
  }
  auto g = InstanceNormActBackwardFunction::apply(grad_y, x, mean, rstd, weight, bias, negative_slope, output_mask);
  return {g[0], g[1], g[2]};
}

class InstanceNormActFunction : public torch::autograd::Function<InstanceNormActFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight,
                               const OptTensor& bias, double eps, double negative_slope) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, rstd] = norm(x, weight, bias, eps, negative_slope);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["negative_slope"] = negative_slope;
    ctx->save_for_backward({x, mean, rstd, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->mark_non_differentiable({mean, rstd});
    // mean/rstd never get a gradient: spare autograd filling two [N,C] zero tensors for them.
    ctx->set_materialize_grads(false);
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    variable_list out(5);  // x, weight, bias, eps, negative_slope
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &mean = saved[1], &rstd = saved[2], &weight = saved[3], &bias = saved[4];
    // needs_input_grad counts the given tensors only: x, then weight and bias when present.
    const bool has_w = weight.defined(), has_b = bias.defined();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), has_w && ctx->needs_input_grad(1),
                                   has_b && ctx->needs_input_grad(has_w ? 2 : 1)};
    if (!mask[0] && !mask[1] && !mask[2]) return out;
    const double negative_slope = ctx->saved_data["negative_slope"].toDouble();
    // Grad mode is on here only under create_graph=True: then the recorded, differentiable formulation.
    auto [gx, gw, gb] =
        at::GradMode::is_enabled()
            ? norm_backward_differentiable(grad_y, x, weight, bias, ctx->saved_data["eps"].toDouble(),
                                           negative_slope, mask)
            : norm_backward(grad_y, x, mean, rstd, optional_of(weight), optional_of(bias), negative_slope, mask);
    if (mask[0]) out[0] = gx;
    if (mask[1]) out[1] = gw;
    if (mask[2]) out[2] = gb;
    return out;
  }
};

Tensor3 instance_norm_act_autograd(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps,
                                   double negative_slope) {
  if (!records_graph(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return norm(x, weight, bias, eps, negative_slope);
  }
  auto out = InstanceNormActFunction::apply(x, weight, bias, eps, negative_slope);
  return {out[0], out[1], out[2]};
}

// ---- instance_norm_act_pad: differentiable in x, weight, bias and residual ----------------------------------
// As instance_norm_act; the backward op folds the padded gradient and returns the folded gradient as the
// residual's. Double backward as instance_norm_act's: under create_graph=True the fold is
// reflection_pad2d_backward (differentiable) followed by norm_backward_differentiable.

using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Tensor3 norm_pad(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
                 double eps, double negative_slope, int64_t pad) {
  static const auto op =
      find_op<Tensor3(const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, double, double,
                      int64_t)>("pix2pixhd_fast::instance_norm_act_pad");
  return op.call(x, weight, bias, residual, eps, negative_slope, pad);
}

Tensor4 norm_pad_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                          const at::Tensor& rstd, const OptTensor& weight, const OptTensor& bias,
                          double negative_slope, int64_t pad, std::array<bool, 4> output_mask) {
  static const auto op =
      find_op<Tensor4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                      const OptTensor&, double, int64_t, std::array<bool, 4>)>(
          "pix2pixhd_fast::instance_norm_act_pad_backward");
  return op.call(grad_y, x, mean, rstd, weight, bias, negative_slope, pad, output_mask);
}

class InstanceNormActPadBackwardFunction : public torch::autograd::Function<InstanceNormActPadBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const at::Tensor& grad_y, const at::Tensor& x,
                               const at::Tensor& mean, const at::Tensor& rstd, const OptTensor& weight,
                               const OptTensor& bias, double negative_slope, int64_t pad,
                               std::array<bool, 4> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gx, gw, gb, gr] = norm_pad_backward(grad_y, x, mean, rstd, weight, bias, negative_slope, pad, output_mask);
    return {gx, gw, gb, gr};
  }

  static variable_list backward(AutogradContext* /*ctx*/, const variable_list& /*grads*/) {
    TORCH_CHECK(false,
                "pix2pixhd_fast::instance_norm_act_pad_backward: a gradient of this op's outputs is not "
                "supported; differentiate instance_norm_act_pad with create_graph=True instead (its double "
                "backward is exact)");
    return {};
  }
};

Tensor4 instance_norm_act_pad_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x,
                                                const at::Tensor& mean, const at::Tensor& rstd,
                                                const OptTensor& weight, const OptTensor& bias,
                                                double negative_slope, int64_t pad,
                                                std::array<bool, 4> output_mask) {
  if (!records_graph(grad_y, x, mean, rstd, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return norm_pad_backward(grad_y, x, mean, rstd, weight, bias, negative_slope, pad, output_mask);
  }
  auto g = InstanceNormActPadBackwardFunction::apply(grad_y, x, mean, rstd, weight, bias, negative_slope, pad,
                                                     output_mask);
  return {g[0], g[1], g[2], g[3]};
}

class InstanceNormActPadFunction : public torch::autograd::Function<InstanceNormActPadFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& residual, double eps, double negative_slope,
                               int64_t pad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, rstd] = norm_pad(x, weight, bias, residual, eps, negative_slope, pad);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["negative_slope"] = negative_slope;
    ctx->saved_data["pad"] = pad;
    ctx->saved_data["has_residual"] = given(residual);
    // The residual itself is not saved: its gradient does not depend on it.
    ctx->save_for_backward({x, mean, rstd, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    variable_list out(7);  // x, weight, bias, residual, eps, negative_slope, pad
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &mean = saved[1], &rstd = saved[2], &weight = saved[3], &bias = saved[4];
    // needs_input_grad counts the given tensors only: x, then weight, bias and residual when present.
    const bool has_w = weight.defined(), has_b = bias.defined();
    const bool has_r = ctx->saved_data["has_residual"].toBool();
    const int iw = 1, ib = iw + has_w, ir = ib + has_b;
    const std::array<bool, 4> mask{ctx->needs_input_grad(0), has_w && ctx->needs_input_grad(iw),
                                   has_b && ctx->needs_input_grad(ib), has_r && ctx->needs_input_grad(ir)};
    if (!mask[0] && !mask[1] && !mask[2] && !mask[3]) return out;
    const double negative_slope = ctx->saved_data["negative_slope"].toDouble();
    const int64_t pad = ctx->saved_data["pad"].toInt();
    at::Tensor gx, gw, gb, gr;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: fold the reflected border with a differentiable op, then the reference norm math.
      const at::Tensor folded = pad > 0 ? at::reflection_pad2d_backward(grad_y, x, {pad, pad, pad, pad}) : grad_y;
      std::tie(gx, gw, gb) = norm_backward_differentiable(folded, x, weight, bias, ctx->saved_data["eps"].toDouble(),
                                                          negative_slope, {mask[0], mask[1], mask[2]});
      if (mask[3]) gr = folded;
    } else {
      std::tie(gx, gw, gb, gr) = norm_pad_backward(grad_y, x, mean, rstd, optional_of(weight), optional_of(bias),
                                                   negative_slope, pad, mask);
    }
    if (mask[0]) out[0] = gx;
    if (mask[1]) out[1] = gw;
    if (mask[2]) out[2] = gb;
    if (mask[3]) out[3] = gr;
    return out;
  }
};

Tensor3 instance_norm_act_pad_autograd(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                                       const OptTensor& residual, double eps, double negative_slope, int64_t pad) {
  if (!records_graph(x, weight, bias, residual)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return norm_pad(x, weight, bias, residual, eps, negative_slope, pad);
  }
  auto out = InstanceNormActPadFunction::apply(x, weight, bias, residual, eps, negative_slope, pad);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pix2pixhd_fast, Autograd, m) {
  m.impl("instance_boundary", &instance_boundary_autograd);
  m.impl("encode_input", &encode_input_autograd);
  m.impl("instance_avg_pool", &instance_avg_pool_autograd);
  m.impl("instance_norm_act", &instance_norm_act_autograd);
  m.impl("instance_norm_act_backward", &instance_norm_act_backward_autograd);
  m.impl("instance_norm_act_pad", &instance_norm_act_pad_autograd);
  m.impl("instance_norm_act_pad_backward", &instance_norm_act_pad_backward_autograd);
}

}  // namespace pix2pixhd_fast
