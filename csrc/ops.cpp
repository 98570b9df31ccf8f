// Every schema of the pix2pixhd_fast operator library, in one place.
//
// Kernels live in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu and register themselves with
// TORCH_LIBRARY_IMPL(pix2pixhd_fast, CPU|CUDA, m); the autograd kernels of every op are in
// csrc/autograd/autograd.cpp (Autograd key). Fake (meta) kernels are registered from Python
// (pix2pixhd_fast/ops.py) with torch.library.
#include <torch/library.h>

#include "common/build_info.h"

TORCH_LIBRARY(pix2pixhd_fast, m) {
  // inst: integer ids [N,1,H,W] or [N,H,W] (float ids must hold integral values).
  // Returns [N,1,H,W] of `dtype`, 1 where a pixel's id differs from one of its 4 neighbours.
  m.def("instance_boundary(Tensor inst, ScalarType dtype) -> Tensor");

  // One-hot(label) ++ boundary(inst) ++ feat in one pass. label/inst: [N,1,H,W] or [N,H,W];
  // feat: [N,Cf,H,W] float. Returns [N, label_nc + (inst given) + Cf, H, W] of `dtype`,
  // channels-last when `channels_last`.
  m.def(
      "encode_input(Tensor label, Tensor? inst, int label_nc, Tensor? feat, ScalarType dtype, "
      "bool channels_last) -> Tensor");

  // Instance-wise average pooling + broadcast: feat [N,C,H,W] float, inst [N,1,H,W] or [N,H,W].
  // Its own adjoint, so the backward is the same op applied to grad_out.
  m.def("instance_avg_pool(Tensor feat, Tensor inst) -> Tensor");

  // Instance norm (biased variance over H*W per (n,c)) + optional affine + LeakyReLU(negative_slope).
  // Returns (y [N,C,H,W] like x, mean [N,C], rstd [N,C]); mean/rstd (fp32, fp64 for fp64 x) are saved
  // for backward.
  m.def(
      "instance_norm_act(Tensor x, Tensor? weight, Tensor? bias, float eps, float negative_slope) "
      "-> (Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_weight, grad_bias); an output is undefined-free: grad_weight/grad_bias are
  // empty [0] tensors when weight/bias are None or output_mask says they are not needed.
  m.def(
      "instance_norm_act_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, "
      "Tensor? bias, float negative_slope, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // instance_norm_act, then + residual, then ReflectionPad2d(pad), in one pass:
  //   y [N,C,H+2*pad,W+2*pad] = pad(act(affine(norm(x))) + residual)
  // x [N,C,H,W]; residual [N,C,H,W] of x's dtype or None (any strides, e.g. the interior view of the previous
  // block's padded output); 0 <= pad < H, W. Returns (y like x's memory format, mean [N,C], rstd [N,C]).
  m.def(
      "instance_norm_act_pad(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, float eps, "
      "float negative_slope, int pad) -> (Tensor, Tensor, Tensor)");
  // grad_y [N,C,H+2*pad,W+2*pad]. Its reflected border is folded back onto the interior in the same pass as the
  // norm backward. Returns (grad_x, grad_weight, grad_bias, grad_residual); grad_residual is the folded
  // gradient [N,C,H,W]. Outputs not asked for by output_mask (or whose input is None) are empty [0] tensors,
  // except grad_x, which is zeros.
  m.def(
      "instance_norm_act_pad_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, "
      "Tensor? bias, float negative_slope, int pad, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");

  // Build description (JSON string): whether CUDA kernels were compiled, for which archs, torch/CUDA.
  m.def("build_info() -> str", []() -> std::string { return pix2pixhd_fast::build_info_json(); });
}
