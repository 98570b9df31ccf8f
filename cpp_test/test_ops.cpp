// C++ test of the pix2pixhd_fast operator library as a LibTorch user sees it: every op is looked up in the
// dispatcher by name (the library registers itself from static initializers when it is loaded) and
// checked on small inputs against hand-computed values or ATen. Runs on CPU, and also on CUDA when the
// library was built with CUDA and a GPU is visible (CUDA results are compared with CPU-side expectations).
//
// Plain checks, no test framework: every failed check prints what and where; exit status 1 on any failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/version.h>

#if __has_include("p2phd_build_config.h")
#include "p2phd_build_config.h"
#endif
#ifndef P2PHD_WITH_CUDA
#define P2PHD_WITH_CUDA 0
#endif

#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;

int g_checks = 0;
int g_failures = 0;
std::string g_case;  // name of the running case, for failure messages

void fail(int line, const std::string& msg) {
  ++g_failures;
  std::fprintf(stderr, "FAIL [%s] (test_ops.cpp:%d): %s\n", g_case.c_str(), line, msg.c_str());
}

#define CHECK_TRUE(cond, msg)                                        \
  do {                                                               \
    ++g_checks;                                                      \
    if (!(cond)) fail(__LINE__, std::string(#cond " -- ") + (msg)); \
  } while (0)

#define CHECK_CLOSE(got, want, rtol, atol, what) check_close(__LINE__, (got), (want), (rtol), (atol), (what))

#define CHECK_THROWS(stmt, needle)                                                                         \
  do {                                                                                                     \
    ++g_checks;                                                                                            \
    bool threw_ = false;                                                                                   \
    try {                                                                                                  \
      stmt;                                                                                                \
    } catch (const c10::Error& e_) {                                                                       \
      threw_ = true;                                                                                       \
      const std::string m_ = e_.what_without_backtrace();                                                  \
      if (m_.find(needle) == std::string::npos)                                                            \
        fail(__LINE__, std::string("error message lacks '") + (needle) + "': " + m_.substr(0, 300));       \
    }                                                                                                      \
    if (!threw_) fail(__LINE__, std::string("expected an error containing '") + (needle) + "' from " #stmt); \
  } while (0)

std::string sizes_str(const Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// Compares in float64 on the CPU; reports the worst element.
void check_close(int line, const Tensor& got, const Tensor& want, double rtol, double atol,
                 const std::string& what) {
  ++g_checks;
  if (!got.defined()) return fail(line, what + ": result is undefined");
  if (got.sizes() != want.sizes())
    return fail(line, what + ": shape " + sizes_str(got) + ", expected " + sizes_str(want));
  if (got.numel() == 0) return;
  const Tensor g = got.detach().cpu().to(at::kDouble);
  const Tensor w = want.detach().cpu().to(at::kDouble);
  const Tensor err = (g - w).abs() - (w.abs() * rtol + atol);
  const int64_t worst = err.flatten().argmax().item<int64_t>();
  if (err.flatten()[worst].item<double>() > 0 || !g.isfinite().all().item<bool>()) {
    std::ostringstream s;
    s << what << ": mismatch at flat index " << worst << ": got " << g.flatten()[worst].item<double>()
      << ", expected " << w.flatten()[worst].item<double>() << " (rtol " << rtol << ", atol " << atol
      << "; max abs diff " << (g - w).abs().max().item<double>() << ")";
    fail(line, s.str());
  }
}

// ---- op lookup -------------------------------------------------------------------------------------------

c10::OperatorHandle find_op(const char* name) {
  const std::string full = std::string("pix2pixhd_fast::") + name;
  auto op = c10::Dispatcher::singleton().findSchema({full.c_str(), ""});
  if (!op.has_value()) {
    throw std::runtime_error("schema " + full +
                             " is not registered: libpix2pixhd_fast_ops.so was not loaded (dropped by an "
                             "as-needed linker?) or csrc/ops.cpp lacks it");
  }
  return c10::Dispatcher::singleton().findSchemaOrThrow(full.c_str(), "");
}

const char* key_name(const at::Device& d) { return d.is_cuda() ? "CUDA" : "CPU"; }

// Whether `name` has a kernel for `device`; a missing one is a failure (every op must have both kernels).
bool have_kernel(const char* name, const at::Device& device) {
  const auto op = find_op(name);
  const auto key = device.is_cuda() ? c10::DispatchKey::CUDA : c10::DispatchKey::CPU;
  if (op.hasKernelForDispatchKey(key)) return true;
  ++g_checks;
  fail(__LINE__, std::string("no ") + key_name(device) + " kernel registered for pix2pixhd_fast::" + name +
                     " (kernel file in csrc/" + (device.is_cuda() ? "cuda/*.cu" : "cpu/*.cpp") +
                     " missing or not built?)");
  return false;
}

Tensor instance_boundary(const Tensor& inst, at::ScalarType dtype) {
  static auto op = find_op("instance_boundary").typed<Tensor(const Tensor&, at::ScalarType)>();
  return op.call(inst, dtype);
}

Tensor encode_input(const Tensor& label, const OptTensor& inst, int64_t label_nc, const OptTensor& feat,
                    at::ScalarType dtype, bool channels_last) {
  static auto op = find_op("encode_input")
                       .typed<Tensor(const Tensor&, const OptTensor&, int64_t, const OptTensor&, at::ScalarType,
                                     bool)>();
  return op.call(label, inst, label_nc, feat, dtype, channels_last);
}

Tensor instance_avg_pool(const Tensor& feat, const Tensor& inst) {
  static auto op = find_op("instance_avg_pool").typed<Tensor(const Tensor&, const Tensor&)>();
  return op.call(feat, inst);
}

Tensor3 instance_norm_act(const Tensor& x, const OptTensor& w, const OptTensor& b, double eps, double slope) {
  static auto op = find_op("instance_norm_act")
                       .typed<Tensor3(const Tensor&, const OptTensor&, const OptTensor&, double, double)>();
  return op.call(x, w, b, eps, slope);
}

Tensor3 instance_norm_act_backward(const Tensor& gy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const OptTensor& w, const OptTensor& b, double slope,
                                   std::array<bool, 3> mask) {
  static auto op = find_op("instance_norm_act_backward")
                       .typed<Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                      const OptTensor&, double, std::array<bool, 3>)>();
  return op.call(gy, x, mean, rstd, w, b, slope, mask);
}

Tensor3 instance_norm_act_pad(const Tensor& x, const OptTensor& w, const OptTensor& b, const OptTensor& res,
                              double eps, double slope, int64_t pad) {
  static auto op = find_op("instance_norm_act_pad")
                       .typed<Tensor3(const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, double,
                                      double, int64_t)>();
  return op.call(x, w, b, res, eps, slope, pad);
}

using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
Tensor4 instance_norm_act_pad_backward(const Tensor& gy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                       const OptTensor& w, const OptTensor& b, double slope, int64_t pad,
                                       std::array<bool, 4> mask) {
  static auto op = find_op("instance_norm_act_pad_backward")
                       .typed<Tensor4(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                      const OptTensor&, double, int64_t, std::array<bool, 4>)>();
  return op.call(gy, x, mean, rstd, w, b, slope, pad, mask);
}

std::string build_info() {
  static auto op = find_op("build_info").typed<std::string()>();
  return op.call();
}

// ---- ATen references (independent of the kernels) ---------------------------------------------------------

// The reference get_edges on [N,1,H,W] ids: 1 on both sides of every horizontal/vertical id change.
Tensor ref_edges(const Tensor& inst4) {
  const Tensor t = inst4.to(at::kLong);
  Tensor e = at::zeros(t.sizes(), t.options().dtype(at::kBool));
  const int64_t h = t.size(2), w = t.size(3);
  if (w > 1) {
    const Tensor dx = t.narrow(3, 1, w - 1) != t.narrow(3, 0, w - 1);
    e.narrow(3, 1, w - 1).logical_or_(dx);
    e.narrow(3, 0, w - 1).logical_or_(dx);
  }
  if (h > 1) {
    const Tensor dy = t.narrow(2, 1, h - 1) != t.narrow(2, 0, h - 1);
    e.narrow(2, 1, h - 1).logical_or_(dy);
    e.narrow(2, 0, h - 1).logical_or_(dy);
  }
  return e.to(at::kFloat);
}

// Pooling by explicit masks: feat [N,C,H,W], inst [N,1,H,W] (one image at a time, one id at a time).
Tensor ref_avg_pool(const Tensor& feat, const Tensor& inst4) {
  const Tensor f = feat.to(at::kDouble);
  Tensor out = at::empty_like(f);
  for (int64_t n = 0; n < f.size(0); ++n) {
    const Tensor ids = inst4[n][0];
    const Tensor uniq = std::get<0>(at::_unique(ids.flatten()));
    for (int64_t k = 0; k < uniq.numel(); ++k) {
      const Tensor mask = (ids == uniq[k]).to(at::kDouble);                       // [H,W]
      const Tensor mean = (f[n] * mask).sum({1, 2}, true) / mask.sum();            // [C,1,1]
      out[n].copy_(at::where(mask.to(at::kBool), mean.expand_as(f[n]), out[n]));
    }
  }
  return out;
}

Tensor ref_norm_act(const Tensor& x, const OptTensor& w, const OptTensor& b, double eps, double slope) {
  const Tensor y = at::instance_norm(x, w, b, /*running_mean=*/{}, /*running_var=*/{}, /*use_input_stats=*/true,
                                     /*momentum=*/0.0, eps, /*cudnn_enabled=*/false);
  return slope == 1.0 ? y : at::leaky_relu(y, slope);
}

// ---- cases ---------------------------------------------------------------------------------------------

void test_instance_boundary(const at::Device& dev) {
  if (!have_kernel("instance_boundary", dev)) return;
  // Two regions side by side: ids 3 | 7 split between columns 1 and 2, so columns 1 and 2 are edges.
  Tensor inst = at::full({1, 1, 4, 5}, 7, at::kLong);
  inst.narrow(3, 0, 2).fill_(3);
  Tensor want = at::zeros({1, 1, 4, 5}, at::kFloat);
  want.narrow(3, 1, 2).fill_(1);
  Tensor got = instance_boundary(inst.to(dev), at::kFloat);
  CHECK_TRUE(got.device() == dev, "output on the input's device");
  CHECK_TRUE(got.scalar_type() == at::kFloat, "float32 output");
  CHECK_CLOSE(got, want, 0, 0, "2-region map, int64 ids");

  // Same map transposed to a top/bottom split, as [N,H,W] uint8 ids; uint8 and bool outputs.
  Tensor inst_t = inst.transpose(2, 3).contiguous().squeeze(1).to(at::kByte);  // [1,5,4]
  Tensor want_t = want.transpose(2, 3).contiguous();                               // [1,1,5,4]
  CHECK_CLOSE(instance_boundary(inst_t.to(dev), at::kByte), want_t, 0, 0, "[N,H,W] uint8 ids -> uint8");
  Tensor gb = instance_boundary(inst_t.to(dev), at::kBool);
  CHECK_TRUE(gb.scalar_type() == at::kBool, "bool output dtype");
  CHECK_CLOSE(gb, want_t, 0, 0, "[N,H,W] uint8 ids -> bool");

  // Ids that collapse in fp16 (26001 vs 26002) must still be told apart when stored as float32.
  Tensor big = at::full({1, 1, 3, 4}, 26001.0, at::kFloat);
  big.narrow(3, 2, 2).fill_(26002.0);
  Tensor want_big = at::zeros({1, 1, 3, 4}, at::kFloat);
  want_big.narrow(3, 1, 2).fill_(1);
  CHECK_CLOSE(instance_boundary(big.to(dev), at::kFloat), want_big, 0, 0, "float ids 26001|26002");

  // Random ids (int32, non-square, odd sizes) against the reference get_edges.
  Tensor rnd = at::randint(0, 3, {2, 1, 9, 11}, at::kInt);
  CHECK_CLOSE(instance_boundary(rnd.to(dev), at::kHalf), ref_edges(rnd), 0, 0, "random int32 ids -> half");

  // 1x1 image: no neighbours, no edge. Empty batch: empty result.
  CHECK_CLOSE(instance_boundary(at::full({1, 1, 1, 1}, 5, at::kLong).to(dev), at::kFloat),
              at::zeros({1, 1, 1, 1}), 0, 0, "1x1 image");
  CHECK_TRUE(instance_boundary(at::zeros({0, 1, 3, 4}, at::kLong).to(dev), at::kFloat).sizes() ==
                 at::IntArrayRef({0, 1, 3, 4}),
             "empty batch keeps its shape");
}

void test_encode_input(const at::Device& dev) {
  if (!have_kernel("encode_input", dev)) return;
  const int64_t nc = 4;
  Tensor label = at::randint(0, nc, {2, 1, 3, 5}, at::kLong);
  Tensor inst = at::full({2, 1, 3, 5}, 1, at::kInt);
  inst.narrow(3, 3, 2).fill_(2);  // columns 2 and 3 are edges
  Tensor feat = at::randn({2, 2, 3, 5});
  const Tensor one_hot = at::one_hot(label.squeeze(1), nc).permute({0, 3, 1, 2}).to(at::kFloat);
  const Tensor want = at::cat({one_hot, ref_edges(inst), feat}, 1);  // [2, 4+1+2, 3, 5]

  Tensor got = encode_input(label.to(dev), inst.to(dev), nc, feat.to(dev), at::kFloat, false);
  CHECK_TRUE(got.size(1) == nc + 1 + 2, "label_nc + 1 + Cf channels, got " + sizes_str(got));
  CHECK_TRUE(got.is_contiguous(), "NCHW output when channels_last=false");
  CHECK_CLOSE(got, want, 0, 0, "one-hot + boundary + feat, float32");
  // Spot-check by hand: pixel (0,0,0) has exactly one hot channel, the one its label names.
  const Tensor px = got.cpu().select(0, 0).narrow(0, 0, nc).select(1, 0).select(1, 0);  // [nc]
  const int64_t l0 = label[0][0][0][0].item<int64_t>();
  CHECK_TRUE(px[l0].item<float>() == 1.0f && px.sum().item<float>() == 1.0f, "one-hot of pixel (0,0,0)");

  Tensor got_cl = encode_input(label.to(dev), inst.to(dev), nc, feat.to(dev), at::kBFloat16, true);
  CHECK_TRUE(got_cl.scalar_type() == at::kBFloat16, "bfloat16 output dtype");
  CHECK_TRUE(got_cl.is_contiguous(at::MemoryFormat::ChannelsLast), "channels-last output when requested");
  CHECK_CLOSE(got_cl, want.to(at::kBFloat16), 0, 0, "bfloat16 channels-last");

  // [N,H,W] label alone (no instance map, no features): a pure one-hot.
  CHECK_CLOSE(encode_input(label.squeeze(1).to(dev), std::nullopt, nc, std::nullopt, at::kFloat, false), one_hot,
              0, 0, "one-hot only");

  // Out-of-range labels are a clear error; the CPU kernel checks them (CUDA leaves that to the caller).
  if (dev.is_cpu()) {
    Tensor bad = label.clone();
    bad[1][0][2][4] = nc;
    CHECK_THROWS(encode_input(bad, inst, nc, feat, at::kFloat, false), "label");
  }
}

void test_instance_avg_pool(const at::Device& dev) {
  if (!have_kernel("instance_avg_pool", dev)) return;
  // feat[0,c,y,x] = 12c + 4y + x on a 3x4 image; column 0 is instance -5, columns 1..3 are instance 70000.
  // Means by hand: column 0 -> (0+4+8)/3 = 4 (+12c); columns 1..3 -> (3*(1+2+3) + 3*4*(0+1+2))/9 = 6 (+12c).
  Tensor feat = at::arange(24, at::kFloat).reshape({1, 2, 3, 4});
  Tensor inst = at::full({1, 1, 3, 4}, 70000, at::kLong);
  inst.narrow(3, 0, 1).fill_(-5);
  Tensor want = at::empty({1, 2, 3, 4});
  for (int64_t c = 0; c < 2; ++c) {
    want[0][c].fill_(6.0 + 12.0 * c);
    want[0][c].narrow(1, 0, 1).fill_(4.0 + 12.0 * c);
  }
  CHECK_CLOSE(instance_avg_pool(feat.to(dev), inst.to(dev)), want, 1e-6, 1e-6, "2 regions, ids -5 and 70000");

  // Random: 2 images sharing ids (pooling must stay within an image), sparse ids, [N,H,W] map.
  Tensor f = at::randn({2, 3, 7, 9});
  Tensor ids = at::randint(0, 4, {2, 1, 7, 9}, at::kLong) * 1000 - 1500;
  const Tensor ref = ref_avg_pool(f, ids);
  CHECK_CLOSE(instance_avg_pool(f.to(dev), ids.squeeze(1).to(dev)), ref, 1e-5, 1e-5, "random, 2 images");

  // Channels-last features keep their format.
  Tensor f_cl = f.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor got_cl = instance_avg_pool(f_cl.to(dev), ids.to(at::kInt).to(dev));
  CHECK_TRUE(got_cl.is_contiguous(at::MemoryFormat::ChannelsLast), "channels-last in -> channels-last out");
  CHECK_CLOSE(got_cl, ref, 1e-5, 1e-5, "random, channels-last");

  // One instance covering everything: every pixel gets the image mean.
  Tensor one = at::zeros({2, 1, 7, 9}, at::kByte);
  CHECK_CLOSE(instance_avg_pool(f.to(dev), one.to(dev)), f.mean({2, 3}, true).expand_as(f), 1e-5, 1e-5,
              "single instance = image mean");
}

void test_instance_norm_act(const at::Device& dev) {
  if (!have_kernel("instance_norm_act", dev)) return;
  const double eps = 1e-5;
  Tensor x = at::randn({2, 3, 5, 7}) * 3 + 2;
  Tensor w = at::rand({3}) + 0.5, b = at::randn({3});

  // No affine, no activation (slope 1): per (n,c) mean ~0 and biased variance ~1.
  auto [y, mean, rstd] = instance_norm_act(x.to(dev), std::nullopt, std::nullopt, eps, 1.0);
  CHECK_TRUE(y.sizes() == x.sizes() && y.scalar_type() == at::kFloat, "y shaped and typed like x");
  CHECK_TRUE(mean.sizes() == at::IntArrayRef({2, 3}) && mean.scalar_type() == at::kFloat, "mean [N,C] fp32");
  CHECK_TRUE(rstd.sizes() == at::IntArrayRef({2, 3}) && rstd.scalar_type() == at::kFloat, "rstd [N,C] fp32");
  CHECK_CLOSE(y.cpu().mean({2, 3}), at::zeros({2, 3}), 0, 1e-5, "normalized mean ~ 0");
  CHECK_CLOSE(y.cpu().var({2, 3}, /*unbiased=*/false), at::ones({2, 3}), 0, 1e-3, "normalized variance ~ 1");
  CHECK_CLOSE(mean, x.mean({2, 3}), 1e-5, 1e-5, "saved mean");
  CHECK_CLOSE(rstd, (x.var({2, 3}, /*unbiased=*/false) + eps).rsqrt(), 1e-4, 1e-5, "saved rstd");
  CHECK_CLOSE(y, ref_norm_act(x, std::nullopt, std::nullopt, eps, 1.0), 1e-4, 1e-5, "no affine vs at::instance_norm");

  // Affine + ReLU (slope 0): non-negative and equal to relu(at::instance_norm).
  Tensor y_relu = std::get<0>(instance_norm_act(x.to(dev), w.to(dev), b.to(dev), eps, 0.0));
  CHECK_TRUE(y_relu.min().item<float>() >= 0.0f, "ReLU output is non-negative");
  CHECK_TRUE(y_relu.eq(0).any().item<bool>() && y_relu.gt(0).any().item<bool>(), "ReLU clips some, keeps some");
  CHECK_CLOSE(y_relu, ref_norm_act(x, w, b, eps, 0.0), 1e-4, 1e-5, "affine + ReLU vs ATen");

  // LeakyReLU 0.2 on a channels-last input: format kept, values as ATen's.
  Tensor x_cl = (at::randn({2, 4, 6, 5}) * 2 - 1).contiguous(at::MemoryFormat::ChannelsLast);
  Tensor w4 = at::randn({4}), b4 = at::randn({4});
  Tensor y_cl = std::get<0>(instance_norm_act(x_cl.to(dev), w4.to(dev), b4.to(dev), eps, 0.2));
  CHECK_TRUE(y_cl.is_contiguous(at::MemoryFormat::ChannelsLast), "channels-last in -> channels-last out");
  CHECK_CLOSE(y_cl, ref_norm_act(x_cl.contiguous(), w4, b4, eps, 0.2), 1e-4, 1e-5, "channels-last LeakyReLU 0.2");

  // bfloat16 in -> bfloat16 out, fp32 statistics.
  Tensor x_bf = x.to(at::kBFloat16);
  Tensor y_bf = std::get<0>(instance_norm_act(x_bf.to(dev), w.to(dev), b.to(dev), eps, 0.0));
  CHECK_TRUE(y_bf.scalar_type() == at::kBFloat16, "bfloat16 output dtype");
  CHECK_CLOSE(y_bf, ref_norm_act(x_bf.to(at::kFloat), w, b, eps, 0.0), 2e-2, 2e-2, "bfloat16 vs fp32 ATen");
}

void test_instance_norm_act_backward(const at::Device& dev) {
  if (!have_kernel("instance_norm_act", dev) || !have_kernel("instance_norm_act_backward", dev)) return;
  const double eps = 1e-5, slope = 0.2;
  for (const auto dtype : {at::kDouble, at::kFloat}) {
    const bool dbl = dtype == at::kDouble;
    const double tol = dbl ? 1e-6 : 1e-4;  // mean/rstd are saved in fp32 even for fp64 input
    const auto opt = at::TensorOptions().dtype(dtype);
    Tensor x = at::randn({2, 3, 4, 5}, opt) * 2 + 1;
    Tensor w = at::rand({3}, opt) + 0.5, b = at::randn({3}, opt);
    Tensor gy = at::randn({2, 3, 4, 5}, opt);
    const std::string tag = dbl ? " (float64)" : " (float32)";

    // ATen autograd of leaky_relu(instance_norm(x, w, b)).
    Tensor xr = x.clone().set_requires_grad(true), wr = w.clone().set_requires_grad(true);
    Tensor br = b.clone().set_requires_grad(true);
    ref_norm_act(xr, wr, br, eps, slope).backward(gy);

    auto [y, mean, rstd] = instance_norm_act(x.to(dev), w.to(dev), b.to(dev), eps, slope);
    auto [gx, gw, gb] = instance_norm_act_backward(gy.to(dev), x.to(dev), mean, rstd, w.to(dev), b.to(dev), slope,
                                                   {true, true, true});
    CHECK_CLOSE(gx, xr.grad(), tol, tol, "grad_x vs ATen autograd" + tag);
    CHECK_CLOSE(gw, wr.grad(), tol, tol, "grad_weight vs ATen autograd" + tag);
    CHECK_CLOSE(gb, br.grad(), tol, tol, "grad_bias vs ATen autograd" + tag);

    if (dbl) {
      // Central differences of L(x) = sum(gy * y(x)) at a few elements, independent of ATen's backward.
      const double h = 1e-5;
      for (const int64_t i : {0, 17, 59, 101}) {
        Tensor xp = x.clone(), xm = x.clone();
        xp.view(-1)[i] += h;
        xm.view(-1)[i] -= h;
        const double lp = (gy * ref_norm_act(xp, w, b, eps, slope)).sum().item<double>();
        const double lm = (gy * ref_norm_act(xm, w, b, eps, slope)).sum().item<double>();
        const double fd = (lp - lm) / (2 * h);
        const double an = gx.cpu().reshape(-1)[i].item<double>();
        CHECK_TRUE(std::abs(fd - an) <= 1e-5 + 1e-4 * std::abs(fd),
                   "grad_x[" + std::to_string(i) + "] = " + std::to_string(an) + " vs finite difference " +
                       std::to_string(fd));
      }
    }

    // output_mask: unwanted weight/bias grads come back as empty [0] tensors.
    auto [gx2, gw2, gb2] = instance_norm_act_backward(gy.to(dev), x.to(dev), mean, rstd, w.to(dev), b.to(dev),
                                                      slope, {true, false, false});
    CHECK_TRUE(gw2.defined() && gw2.numel() == 0 && gb2.defined() && gb2.numel() == 0,
               "masked-out grad_weight/grad_bias are empty" + tag);
    CHECK_CLOSE(gx2, xr.grad(), tol, tol, "grad_x with mask {1,0,0}" + tag);
  }

  // No affine, ReLU, channels-last.
  Tensor x = at::randn({1, 4, 5, 6}).contiguous(at::MemoryFormat::ChannelsLast);
  Tensor gy = at::randn({1, 4, 5, 6}).contiguous(at::MemoryFormat::ChannelsLast);
  Tensor xr = x.clone().set_requires_grad(true);
  ref_norm_act(xr, std::nullopt, std::nullopt, eps, 0.0).backward(gy);
  auto [y, mean, rstd] = instance_norm_act(x.to(dev), std::nullopt, std::nullopt, eps, 0.0);
  auto [gx, gw, gb] = instance_norm_act_backward(gy.to(dev), x.to(dev), mean, rstd, std::nullopt, std::nullopt,
                                                 0.0, {true, true, true});
  CHECK_TRUE(gx.is_contiguous(at::MemoryFormat::ChannelsLast), "channels-last grad_x for channels-last x");
  CHECK_TRUE(gw.numel() == 0 && gb.numel() == 0, "no weight/bias -> empty grads");
  CHECK_CLOSE(gx, xr.grad(), 1e-4, 1e-4, "no affine, ReLU, channels-last grad_x");
}

// The library's autograd kernels (csrc/autograd): gradients of calls made through the dispatcher, as any
// LibTorch program makes them, against ATen autograd, double backward included.
void test_autograd(const at::Device& dev) {
  for (const char* name : {"instance_norm_act", "instance_norm_act_pad", "instance_avg_pool", "encode_input"}) {
    ++g_checks;
    if (!find_op(name).hasKernelForDispatchKey(c10::DispatchKey::Autograd))
      fail(__LINE__, std::string("no Autograd kernel registered for pix2pixhd_fast::") + name);
  }
  if (!have_kernel("instance_norm_act", dev) || !have_kernel("instance_avg_pool", dev)) return;
  const auto leaf = [&](const Tensor& t) { return t.to(dev).clone().set_requires_grad(true); };
  const double eps = 1e-5, slope = 0.2;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const Tensor x = at::randn({2, 3, 4, 5}, f64), w = at::rand({3}, f64) + 0.5, b = at::randn({3}, f64);
  const Tensor gy = at::randn({2, 3, 4, 5}, f64);
  Tensor xr = x.clone().set_requires_grad(true), wr = w.clone().set_requires_grad(true);
  Tensor br = b.clone().set_requires_grad(true);
  ref_norm_act(xr, wr, br, eps, slope).backward(gy);

  Tensor xd = leaf(x), wd = leaf(w), bd = leaf(b);
  auto [y, mean, rstd] = instance_norm_act(xd, wd, bd, eps, slope);
  CHECK_TRUE(y.requires_grad() && !mean.requires_grad() && !rstd.requires_grad(), "y differentiable, mean/rstd not");
  y.backward(gy.to(dev));
  CHECK_CLOSE(xd.grad(), xr.grad(), 1e-6, 1e-6, "norm grad_x via autograd");
  CHECK_CLOSE(wd.grad(), wr.grad(), 1e-6, 1e-6, "norm grad_weight via autograd");
  CHECK_CLOSE(bd.grad(), br.grad(), 1e-6, 1e-6, "norm grad_bias via autograd");

  // Only bias requires grad (no weight): the one gradient asked for, right.
  Tensor bd2 = leaf(b);
  const Tensor y2 = std::get<0>(instance_norm_act(x.to(dev), std::nullopt, bd2, eps, slope));
  const Tensor gb = torch::autograd::grad({y2}, {bd2}, {gy.to(dev)})[0];
  Tensor br2 = b.clone().set_requires_grad(true);
  ref_norm_act(x, std::nullopt, br2, eps, slope).backward(gy);
  CHECK_CLOSE(gb, br2.grad(), 1e-6, 1e-6, "norm grad_bias, no weight, x without grad");

  // Double backward through the norm (gradient penalties): d/d(x, w) of <grad_x, v> against ATen's.
  {
    const Tensor v = at::randn(x.sizes(), f64);
    Tensor xd3 = leaf(x), wd3 = leaf(w), bd3 = leaf(b);
    const Tensor y3 = std::get<0>(instance_norm_act(xd3, wd3, bd3, eps, slope));
    const Tensor gx3 =
        torch::autograd::grad({y3}, {xd3}, {gy.to(dev)}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    CHECK_TRUE(gx3.requires_grad(), "create_graph=True gives a differentiable grad_x");
    const auto gg = torch::autograd::grad({(gx3 * v.to(dev)).sum()}, {xd3, wd3});
    Tensor xr3 = x.clone().set_requires_grad(true), wr3 = w.clone().set_requires_grad(true);
    const Tensor yr3 = ref_norm_act(xr3, wr3, b, eps, slope);
    const Tensor gxr3 = torch::autograd::grad({yr3}, {xr3}, {gy}, true, true)[0];
    const auto ggr = torch::autograd::grad({(gxr3 * v).sum()}, {xr3, wr3});
    CHECK_CLOSE(gg[0], ggr[0], 1e-6, 1e-6, "norm double backward: d<grad_x, v>/dx");
    CHECK_CLOSE(gg[1], ggr[1], 1e-6, 1e-6, "norm double backward: d<grad_x, v>/dweight");
  }

  // Pooling is its own adjoint: d/dfeat sum(pool(feat) * g) = pool(g).
  const Tensor ids = at::randint(0, 4, {2, 1, 7, 9}, at::kLong) * 1000 - 1500;
  const Tensor g = at::randn({2, 3, 7, 9}, f64);
  Tensor fd = leaf(at::randn({2, 3, 7, 9}, f64));
  Tensor pooled = instance_avg_pool(fd, ids.to(dev));
  CHECK_TRUE(pooled.requires_grad(), "pooled output requires grad");
  pooled.backward(g.to(dev));
  CHECK_CLOSE(fd.grad(), ref_avg_pool(g, ids), 1e-9, 1e-9, "pool grad_feat = pool(grad)");

  // encode_input: feat's gradient is its channel slice of the output's gradient, in feat's dtype.
  if (!have_kernel("encode_input", dev)) return;
  const int64_t nc = 4;
  const Tensor label = at::randint(0, nc, {2, 1, 7, 9}, at::kLong);
  Tensor feat = leaf(at::randn({2, 2, 7, 9}));
  const Tensor enc = encode_input(label.to(dev), ids.to(dev), nc, feat, at::kDouble, true);
  const Tensor genc = at::randn({2, nc + 1 + 2, 7, 9}, f64);
  enc.backward(genc.to(dev));
  CHECK_TRUE(feat.grad().scalar_type() == at::kFloat, "encode grad_feat in feat's dtype");
  CHECK_CLOSE(feat.grad(), genc.narrow(1, nc + 1, 2), 1e-6, 0, "encode grad_feat = channel slice");
}

// ReflectionPad2d(pad)(act(norm(x)) + residual), all in ATen.
Tensor ref_norm_act_pad(const Tensor& x, const OptTensor& w, const OptTensor& b, const OptTensor& res, double eps,
                        double slope, int64_t pad) {
  Tensor y = ref_norm_act(x, w, b, eps, slope);
  if (res.has_value()) y = y + *res;
  return pad > 0 ? at::reflection_pad2d(y, {pad, pad, pad, pad}) : y;
}

// The padded-output norm: forward against ATen in NCHW, channels-last and bf16, with and without the residual
// (read through its strides, as the interior view of a padded buffer); every gradient, through the backward
// op and through autograd, against ATen's.
void test_instance_norm_act_pad(const at::Device& dev) {
  if (!have_kernel("instance_norm_act_pad", dev) || !have_kernel("instance_norm_act_pad_backward", dev)) return;
  const double eps = 1e-5;
  const int64_t p = 3;
  const Tensor x = at::randn({2, 5, 9, 11}) * 2 + 1;
  const Tensor w = at::rand({5}) + 0.5, b = at::randn({5});
  // Residual as the interior of a padded buffer: a strided view, not contiguous.
  const Tensor res_buf = at::randn({2, 5, 9 + 2 * p, 11 + 2 * p});
  const Tensor res = res_buf.narrow(2, p, 9).narrow(3, p, 11);

  auto [y, mean, rstd] = instance_norm_act_pad(x.to(dev), w.to(dev), b.to(dev), res.to(dev), eps, 0.0, p);
  CHECK_TRUE(y.sizes() == at::IntArrayRef({2, 5, 9 + 2 * p, 11 + 2 * p}), "padded shape " + sizes_str(y));
  CHECK_TRUE(mean.sizes() == at::IntArrayRef({2, 5}) && rstd.sizes() == at::IntArrayRef({2, 5}), "stats [N,C]");
  CHECK_CLOSE(y, ref_norm_act_pad(x, w, b, res, eps, 0.0, p), 1e-4, 1e-5, "affine + ReLU + residual, pad 3");
  CHECK_CLOSE(mean, x.mean({2, 3}), 1e-5, 1e-5, "saved mean");

  const Tensor x_cl = x.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor y_cl = std::get<0>(instance_norm_act_pad(x_cl.to(dev), std::nullopt, std::nullopt, std::nullopt,
                                                        eps, 0.2, 1));
  CHECK_TRUE(y_cl.is_contiguous(at::MemoryFormat::ChannelsLast), "channels-last in -> channels-last out");
  CHECK_CLOSE(y_cl, ref_norm_act_pad(x, std::nullopt, std::nullopt, std::nullopt, eps, 0.2, 1), 1e-4, 1e-5,
              "channels-last LeakyReLU 0.2, pad 1");

  const Tensor y_bf = std::get<0>(
      instance_norm_act_pad(x.to(at::kBFloat16).to(dev), w.to(dev), b.to(dev), std::nullopt, eps, 1.0, 2));
  CHECK_TRUE(y_bf.scalar_type() == at::kBFloat16, "bfloat16 in -> bfloat16 out");
  CHECK_CLOSE(y_bf, ref_norm_act_pad(x.to(at::kBFloat16).to(at::kFloat), w, b, std::nullopt, eps, 1.0, 2), 2e-2,
              2e-2, "bfloat16, identity activation, pad 2");

  CHECK_THROWS(instance_norm_act_pad(x.narrow(3, 0, 3).to(dev), w.to(dev), b.to(dev), std::nullopt, eps, 0.0, 3),
               "pad < H and pad < W");

  // Backward in fp64: the op and autograd, against ATen autograd of the composition.
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble), bd = b.to(at::kDouble), rd = res.to(at::kDouble);
  const Tensor gy = at::randn({2, 5, 9 + 2 * p, 11 + 2 * p}, f64);
  Tensor xr = xd.clone().set_requires_grad(true), wr = wd.clone().set_requires_grad(true);
  Tensor br = bd.clone().set_requires_grad(true), rr = rd.clone().set_requires_grad(true);
  ref_norm_act_pad(xr, wr, br, rr, eps, 0.2, p).backward(gy);

  auto [y2, m2, r2] = instance_norm_act_pad(xd.to(dev), wd.to(dev), bd.to(dev), rd.to(dev), eps, 0.2, p);
  auto [gx, gw, gb, gres] = instance_norm_act_pad_backward(gy.to(dev), xd.to(dev), m2, r2, wd.to(dev),
                                                           bd.to(dev), 0.2, p, {true, true, true, true});
  CHECK_CLOSE(gx, xr.grad(), 1e-6, 1e-6, "pad backward op: grad_x");
  CHECK_CLOSE(gw, wr.grad(), 1e-6, 1e-6, "pad backward op: grad_weight");
  CHECK_CLOSE(gb, br.grad(), 1e-6, 1e-6, "pad backward op: grad_bias");
  CHECK_CLOSE(gres, rr.grad(), 1e-9, 1e-9, "pad backward op: grad_residual (border folded)");

  const auto leaf = [&](const Tensor& t) { return t.to(dev).clone().set_requires_grad(true); };
  Tensor xa = leaf(xd), wa = leaf(wd), ba = leaf(bd), ra = leaf(rd);
  std::get<0>(instance_norm_act_pad(xa, wa, ba, ra, eps, 0.2, p)).backward(gy.to(dev));
  CHECK_CLOSE(xa.grad(), xr.grad(), 1e-6, 1e-6, "pad autograd: grad_x");
  CHECK_CLOSE(wa.grad(), wr.grad(), 1e-6, 1e-6, "pad autograd: grad_weight");
  CHECK_CLOSE(ra.grad(), rr.grad(), 1e-9, 1e-9, "pad autograd: grad_residual");
}

void test_build_info() {
  const std::string info = build_info();
  std::printf("build_info: %s\n", info.c_str());
  const std::string want_cuda = std::string("\"cuda\": ") + (P2PHD_WITH_CUDA ? "true" : "false");
  CHECK_TRUE(!info.empty() && info.front() == '{' && info.back() == '}', "JSON object: " + info);
  CHECK_TRUE(info.find(want_cuda) != std::string::npos, "expected " + want_cuda + " in " + info);
  CHECK_TRUE(info.find("\"torch_version\": \"" TORCH_VERSION "\"") != std::string::npos,
             "torch_version " TORCH_VERSION " in " + info);
}

void run(const std::string& name, const std::function<void()>& fn) {
  g_case = name;
  const int before = g_failures;
  try {
    fn();
  } catch (const c10::Error& e) {
    fail(0, std::string("unexpected c10::Error: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(0, std::string("unexpected exception: ") + e.what());
  }
  std::printf("%-40s %s\n", name.c_str(), g_failures == before ? "ok" : "FAILED");
  std::fflush(stdout);
}

}  // namespace

int main() {
  at::manual_seed(0);
  std::printf("torch %s, pix2pixhd_fast built with CUDA: %d\n", TORCH_VERSION, P2PHD_WITH_CUDA);

  std::vector<at::Device> devices{at::Device(at::kCPU)};
  if (P2PHD_WITH_CUDA && at::hasCUDA()) devices.emplace_back(at::kCUDA, 0);
  else if (P2PHD_WITH_CUDA) std::printf("CUDA kernels built but no GPU visible: CUDA cases not run\n");

  run("schemas registered", [] {
    for (const char* name : {"instance_boundary", "encode_input", "instance_avg_pool", "instance_norm_act",
                             "instance_norm_act_backward", "instance_norm_act_pad", "instance_norm_act_pad_backward",
                             "build_info"}) {
      ++g_checks;
      find_op(name);  // throws with a clear message when the library was not loaded
    }
  });
  run("build_info", test_build_info);
  for (const auto& dev : devices) {
    const std::string d = std::string(" [") + key_name(dev) + "]";
    run("instance_boundary" + d, [&] { test_instance_boundary(dev); });
    run("encode_input" + d, [&] { test_encode_input(dev); });
    run("instance_avg_pool" + d, [&] { test_instance_avg_pool(dev); });
    run("instance_norm_act" + d, [&] { test_instance_norm_act(dev); });
    run("instance_norm_act_backward" + d, [&] { test_instance_norm_act_backward(dev); });
    run("instance_norm_act_pad" + d, [&] { test_instance_norm_act_pad(dev); });
    run("autograd" + d, [&] { test_autograd(dev); });
  }

  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
