// instance_avg_pool on the CPU. Per image, the id map is scanned once into runs of equal ids (label maps
// are piecewise constant, so a hash lookup happens once per run, not per pixel) and each distinct id gets
// a compact index from a growable open-addressing table. Then, in parallel over (image, pixel chunk):
// per-index channel sums over the runs (contiguous segment sums for NCHW, row adds along C for NHWC),
// reduced into per-index means, and finally a fill pass over the runs. Cost O(N*C*H*W), independent of the
// number of instances; fp32 accumulation (fp64 for fp64).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/instance_avg_pool.cuh"
#include "common/op_utils.h"

namespace pix2pixhd_fast {
namespace {

template <typename T>
constexpr bool is_float_id = std::is_floating_point_v<T> || std::is_same_v<T, c10::Half> ||
                             std::is_same_v<T, c10::BFloat16>;

// Pixels per parallel task below which an image is not split further.
constexpr int64_t kMinChunk = 16384;

// 64-bit key -> compact index (0, 1, ... in order of first appearance); doubles when half full.
class IdIndex {
 public:
  IdIndex() { reset(64); }

  int32_t index_of(uint64_t key) {
    size_t h = static_cast<size_t>(iap::mix64(key)) & mask_;
    while (true) {
      const int32_t v = vals_[h];
      if (v < 0) {
        if (2 * static_cast<size_t>(size_ + 1) > vals_.size()) {
          grow();
          return index_of(key);
        }
        keys_[h] = key;
        vals_[h] = size_;
        return size_++;
      }
      if (keys_[h] == key) return v;
      h = (h + 1) & mask_;
    }
  }

 private:
  void reset(size_t cap) {
    keys_.assign(cap, 0);
    vals_.assign(cap, -1);
    mask_ = cap - 1;
  }
  void grow() {
    std::vector<uint64_t> old_keys = std::move(keys_);
    std::vector<int32_t> old_vals = std::move(vals_);
    reset(old_vals.size() * 2);
    for (size_t i = 0; i < old_vals.size(); ++i) {
      if (old_vals[i] < 0) continue;
      size_t h = static_cast<size_t>(iap::mix64(old_keys[i])) & mask_;
      while (vals_[h] >= 0) h = (h + 1) & mask_;
      keys_[h] = old_keys[i];
      vals_[h] = old_vals[i];
    }
  }

  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;
  size_t mask_ = 0;
  int32_t size_ = 0;
};

// One image's id map as runs: run r covers pixels [start[r], start[r+1]) and has compact index idx[r].
struct Runs {
  std::vector<int64_t> start;
  std::vector<int32_t> idx;
  std::vector<int64_t> count;  // pixels per compact index

  int64_t num_ids() const { return static_cast<int64_t>(count.size()); }
  // First run that intersects [p, ...).
  int64_t run_at(int64_t p) const {
    return static_cast<int64_t>(std::upper_bound(start.begin(), start.end(), p) - start.begin()) - 1;
  }
};

template <typename id_t>
void build_runs(const id_t* ids, int64_t hw, Runs& runs) {
  IdIndex index;
  int64_t p = 0;
  while (p < hw) {
    const id_t v = ids[p];
    if constexpr (is_float_id<id_t>) {
      using A = std::conditional_t<std::is_same_v<id_t, double>, double, float>;
      const A a = static_cast<A>(v);
      TORCH_CHECK(std::trunc(a) == a, "inst holds fractional values (found ", num(static_cast<double>(a)),
                  "); ids must be integers (use an integer dtype)");
    }
    int64_t q = p + 1;
    while (q < hw && ids[q] == v) ++q;
    const int32_t k = index.index_of(iap::id_key(v));
    if (k == static_cast<int32_t>(runs.count.size())) runs.count.push_back(0);
    runs.count[k] += q - p;
    runs.start.push_back(p);
    runs.idx.push_back(k);
    p = q;
  }
  runs.start.push_back(hw);
}

// Sum of a contiguous segment; 8 independent accumulators so the compiler can vectorise the loop.
template <typename acc_t, typename scalar_t>
acc_t segment_sum(const scalar_t* x, int64_t len) {
  acc_t a[8] = {};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    for (int u = 0; u < 8; ++u) a[u] += static_cast<acc_t>(x[i + u]);
  }
  for (; i < len; ++i) a[0] += static_cast<acc_t>(x[i]);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// NHWC rows of C channels: small C gets a compile-time channel count (kC > 0) so the per-pixel loop
// unrolls; otherwise (kC == 0) the inner loop runs along C and vectorises.
template <typename F>
void with_channel_count(int64_t channels, const F& f) {
  switch (channels) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

template <int kC, typename acc_t, typename scalar_t>
void add_rows(const scalar_t* x, int64_t len, int64_t channels, acc_t* row) {
  if constexpr (kC > 0) {
    acc_t a[kC] = {};
    for (int64_t p = 0; p < len; ++p) {
      for (int c = 0; c < kC; ++c) a[c] += static_cast<acc_t>(x[p * kC + c]);
    }
    for (int c = 0; c < kC; ++c) row[c] += a[c];
  } else {
    for (int64_t p = 0; p < len; ++p) {
      for (int64_t c = 0; c < channels; ++c) row[c] += static_cast<acc_t>(x[p * channels + c]);
    }
  }
}

template <int kC, typename scalar_t>
void fill_rows(scalar_t* y, int64_t len, int64_t channels, const scalar_t* row) {
  if constexpr (kC > 0) {
    scalar_t v[kC];
    for (int c = 0; c < kC; ++c) v[c] = row[c];
    for (int64_t p = 0; p < len; ++p) {
      for (int c = 0; c < kC; ++c) y[p * kC + c] = v[c];
    }
  } else {
    for (int64_t p = 0; p < len; ++p) std::copy_n(row, channels, y + p * channels);
  }
}

// Calls f(first_pixel, end_pixel, compact_index) for the runs clipped to [a, b).
template <typename F>
void for_each_run(const Runs& runs, int64_t a, int64_t b, const F& f) {
  for (int64_t r = runs.run_at(a); a < b; ++r) {
    const int64_t e = std::min(b, runs.start[r + 1]);
    f(a, e, runs.idx[r]);
    a = e;
  }
}

template <typename scalar_t, typename id_t>
void pool_cpu(const at::Tensor& feat, const at::Tensor& ids, at::Tensor& out, bool channels_last) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t n_img = feat.size(0), channels = feat.size(1), hw = feat.size(2) * feat.size(3);
  const scalar_t* x = feat.const_data_ptr<scalar_t>();
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  const id_t* id = ids.const_data_ptr<id_t>();
  // Element (n, c, p) of the canonical layouts (feat and out share one).
  const int64_t pix_stride = channels_last ? channels : 1;
  const int64_t ch_stride = channels_last ? 1 : hw;
  const int64_t img_stride = channels * hw;

  std::vector<Runs> runs(n_img);
  at::parallel_for(0, n_img, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) build_runs(id + n * hw, hw, runs[n]);
  });

  // Pixel chunks per image so that a few tasks exist per thread even for one image. The partition depends
  // only on the sizes and the thread count and the chunk sums are added in chunk order, so results are
  // bitwise reproducible run to run (torch.use_deterministic_algorithms needs nothing more here).
  const int64_t threads = at::get_num_threads();
  const int64_t want = n_img >= 2 * threads ? 1 : (2 * threads + n_img - 1) / n_img;
  const int64_t chunks = std::max<int64_t>(1, std::min(want, hw / kMinChunk));
  auto chunk_begin = [&](int64_t s) { return hw * s / chunks; };

  // part[n][s] holds [num_ids, C] sums of chunk s; offsets per image since num_ids differs.
  std::vector<int64_t> part_off(n_img + 1, 0);
  for (int64_t n = 0; n < n_img; ++n) part_off[n + 1] = part_off[n] + runs[n].num_ids() * channels * chunks;
  std::vector<acc_t> part(part_off[n_img], acc_t(0));

  at::parallel_for(0, n_img * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / chunks, s = t % chunks;
      const Runs& r = runs[n];
      acc_t* sums = part.data() + part_off[n] + s * r.num_ids() * channels;
      const scalar_t* xn = x + n * img_stride;
      if (!channels_last) {
        // One channel plane at a time: a single sequential stream for the prefetcher.
        for (int64_t c = 0; c < channels; ++c) {
          const scalar_t* xc = xn + c * ch_stride;
          for_each_run(r, chunk_begin(s), chunk_begin(s + 1), [&](int64_t a, int64_t b, int32_t k) {
            sums[static_cast<int64_t>(k) * channels + c] += segment_sum<acc_t>(xc + a, b - a);
          });
        }
      } else {
        with_channel_count(channels, [&](auto kc) {
          for_each_run(r, chunk_begin(s), chunk_begin(s + 1), [&](int64_t a, int64_t b, int32_t k) {
            add_rows<decltype(kc)::value>(xn + a * pix_stride, b - a, channels, sums + int64_t{k} * channels);
          });
        });
      }
    }
  });

  // Means [num_ids, C] per image, in the output dtype (what the fill pass copies).
  std::vector<int64_t> mean_off(n_img + 1, 0);
  for (int64_t n = 0; n < n_img; ++n) mean_off[n + 1] = mean_off[n] + runs[n].num_ids() * channels;
  std::vector<scalar_t> means(mean_off[n_img]);
  at::parallel_for(0, n_img, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const Runs& r = runs[n];
      const int64_t m = r.num_ids() * channels;
      const acc_t* pn = part.data() + part_off[n];
      for (int64_t i = 0; i < m; ++i) {
        acc_t s = acc_t(0);
        for (int64_t c = 0; c < chunks; ++c) s += pn[c * m + i];
        means[mean_off[n] + i] = static_cast<scalar_t>(s / static_cast<acc_t>(r.count[i / channels]));
      }
    }
  });

  at::parallel_for(0, n_img * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / chunks, s = t % chunks;
      const scalar_t* mn = means.data() + mean_off[n];
      scalar_t* yn = y + n * img_stride;
      if (!channels_last) {
        for (int64_t c = 0; c < channels; ++c) {
          scalar_t* yc = yn + c * ch_stride;
          for_each_run(runs[n], chunk_begin(s), chunk_begin(s + 1), [&](int64_t a, int64_t b, int32_t k) {
            std::fill_n(yc + a, b - a, mn[static_cast<int64_t>(k) * channels + c]);
          });
        }
      } else {
        with_channel_count(channels, [&](auto kc) {
          for_each_run(runs[n], chunk_begin(s), chunk_begin(s + 1), [&](int64_t a, int64_t b, int32_t k) {
            fill_rows<decltype(kc)::value>(yn + a * pix_stride, b - a, channels, mn + int64_t{k} * channels);
          });
        });
      }
    }
  });
}

}  // namespace

at::Tensor instance_avg_pool_cpu(const at::Tensor& feat, const at::Tensor& inst) {
  check_float_input(feat, "feat");
  TORCH_CHECK(feat.dim() == 4, "instance_avg_pool: feat must have shape [N,C,H,W], got ", dims(feat.sizes()));
  TORCH_CHECK(feat.device().is_cpu(), "instance_avg_pool_cpu: feat must be a CPU tensor, got ",
              feat.device().str());
  check_same_device(feat, "feat", inst, "inst");
  const at::Tensor ids = check_ids(inst, "inst");
  TORCH_CHECK(ids.size(0) == feat.size(0) && ids.size(1) == feat.size(2) && ids.size(2) == feat.size(3),
              "instance_avg_pool: feat ", dims(feat.sizes()), " and inst ", dims(inst.sizes()), " must share N, H and W");
  const bool channels_last = wants_channels_last(feat);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty(feat.sizes(), feat.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const at::Tensor x = feat.contiguous(fmt);
  P2PHD_DISPATCH_ID_TYPES(ids.scalar_type(), "instance_avg_pool_cpu", [&] {
    using id_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_avg_pool_cpu", [&] {
      pool_cpu<scalar_t, id_t>(x, ids, out, channels_last);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(pix2pixhd_fast, CPU, m) { m.impl("instance_avg_pool", &instance_avg_pool_cpu); }

}  // namespace pix2pixhd_fast
