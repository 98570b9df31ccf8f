// Instance-wise average pooling: id keys and hashing (shared by the CPU and CUDA kernels) and the CUDA
// device code. Free of ATen types: feature/id element types are template parameters that only need
// static_cast to float/double (c10::Half, __half, ... all qualify), so a TensorRT plugin can reuse this.
//
// CUDA design (no host sync, so the number of distinct ids is unknown on the host; every buffer is sized
// for the worst case, but only the part that the data needs is initialised or touched):
//   1. tile_pool_kernel: one block per tile of kTile consecutive pixels of one image. Ids are deduplicated
//      in a shared-memory hash table (never overflows: 2 * kTile slots), each distinct id of the tile gets
//      a tile-local index j, and counts and per-channel sums are accumulated per j in shared memory (or,
//      when D * C does not fit, in the tile's own global partial buffer). Big regions (road, sky) then
//      cost one atomic per warp, not one per pixel. Writes the tile's partials: D keys, counts, sums.
//   2. table_init_kernel: per image, U = sum of the tiles' distinct counts bounds the number of distinct
//      ids; a global open-addressing table of cap = 1.5 U + 1 probe slots is zeroed (not the worst case).
//   3. merge_kernel: every tile partial claims/finds its key in the image's table and adds its count and
//      sums there; lanes of a warp hold partials of 32 different tiles, so equal keys are summed by warp
//      shuffles before the global atomic.
//   4. write_kernel: each pixel finds its slot (read-only probe) and writes sum / count per channel.
// Bytes: feat read once, out written once, ids read twice; partials and the table are tiny for real maps.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define P2PHD_IAP_HD __host__ __device__ __forceinline__
#else
#define P2PHD_IAP_HD inline
#endif

namespace pix2pixhd_fast {
namespace iap {

// Every id becomes a 64-bit key compared exactly: integers sign-extended (uint8 zero-extended), floats as
// the bits of the double with the same value (-0.0 folded into 0.0 so that equal values give equal keys).
template <typename id_t>
P2PHD_IAP_HD uint64_t id_key(id_t v) {
  if constexpr (std::is_integral<id_t>::value) {
    return static_cast<uint64_t>(static_cast<int64_t>(v));
  } else {
    double d;
    if constexpr (std::is_same<id_t, double>::value) {
      d = v;
    } else {
      d = static_cast<double>(static_cast<float>(v));
    }
    if (d == 0.0) d = 0.0;
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    return bits;
  }
}

// murmur3's 64-bit finaliser: arange-like and sparse ids both spread over the table.
P2PHD_IAP_HD uint64_t mix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

// Home slot in [0, cap) without a power-of-two capacity (multiply-shift range reduction).
P2PHD_IAP_HD uint32_t home_slot(uint64_t key, uint32_t cap) {
  return static_cast<uint32_t>(((mix64(key) >> 32) * static_cast<uint64_t>(cap)) >> 32);
}

// Device tables store key ^ kFlip so that a zeroed word means "empty"; the one key whose stored form is 0
// (INT64_MIN) lives in a reserved slot at index cap instead of being probed for.
constexpr uint64_t kFlip = 0x8000000000000000ULL;
constexpr uint64_t kSpecialKey = kFlip;

#if defined(__CUDACC__)

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;                   // threads per block of the per-pixel kernels
constexpr int kPixPerThread = 4;                // consecutive pixels per thread (one 16-byte fp32 vector)
constexpr int kTile = kThreads * kPixPerThread;  // pixels per tile
constexpr int kTileTable = 2 * kTile;           // shared probe slots: load factor <= 1/2, never full
constexpr int kSumBytes = 16384;                // shared per-(id, channel) sums of a tile
constexpr int kMaxGroups = 4;                   // distinct targets per warp still summed by shuffles
constexpr uint32_t kNotFound = 0xffffffffu;

__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// IEEE division even under --use_fast_math (the means match the reference's sum / count).
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return a / b; }

// Find `key` in a table of `cap` probe slots (+ the reserved slot cap), claiming an empty slot if it is
// absent. Every probe is one atomicCAS, which also reads: concurrent claims of one key agree on a slot, and
// no thread ever waits for another (a CAS claims, finds the key, or moves on). Terminates because the
// table always has more probe slots than distinct keys. `won` is set for the one thread that claimed.
__device__ __forceinline__ uint32_t table_find_or_claim(unsigned long long* keys, uint32_t cap, uint64_t key,
                                                        bool& won) {
  if (key == kSpecialKey) {
    won = atomicCAS(keys + cap, 0ull, 1ull) == 0ull;
    return cap;
  }
  const unsigned long long stored = key ^ kFlip;
  uint32_t h = home_slot(key, cap);
  while (true) {
    const unsigned long long prev = atomicCAS(keys + h, 0ull, stored);
    if (prev == 0ull) {
      won = true;
      return h;
    }
    if (prev == stored) {
      won = false;
      return h;
    }
    if (++h == cap) h = 0;
  }
}

// Read-only lookup in a finished table (a later kernel than the claims). Bounded by cap probes.
__device__ __forceinline__ uint32_t table_find(const unsigned long long* keys, uint32_t cap, uint64_t key) {
  if (key == kSpecialKey) return cap;
  const unsigned long long stored = key ^ kFlip;
  uint32_t h = home_slot(key, cap);
  for (uint32_t i = 0; i < cap; ++i) {
    const unsigned long long k = keys[h];
    if (k == stored) return h;
    if (k == 0ull) break;
    if (++h == cap) h = 0;
  }
  return kNotFound;  // unreachable: every key of the image was claimed by an earlier kernel
}

// Warp-cooperative find_or_claim: one CAS chain per distinct valid key in the warp; the other lanes with
// that key take the leader's slot. All 32 lanes must call it together.
__device__ __forceinline__ uint32_t warp_find_or_claim(unsigned long long* keys, uint32_t cap, uint64_t key,
                                                       bool valid, bool& won) {
  const unsigned vmask = __ballot_sync(kFullMask, valid);
  unsigned peers = __match_any_sync(kFullMask, static_cast<unsigned long long>(key));
  peers = valid ? (peers & vmask) : (1u << lane_id());
  const int leader = __ffs(peers) - 1;
  uint32_t slot = 0;
  won = false;
  if (valid && lane_id() == leader) slot = table_find_or_claim(keys, cap, key, won);
  return __shfl_sync(kFullMask, slot, leader);
}

// Lanes are grouped by a non-negative key (-1: nothing to add). When the warp holds at most kMaxGroups
// groups, each group's values are summed by shuffles and added once by its lowest lane; otherwise every
// lane adds its own value. All 32 lanes must call warp_groups / grouped_add together.
struct WarpGroups {
  unsigned leaders;
  bool few;
};

__device__ __forceinline__ WarpGroups warp_groups(int gkey) {
  const unsigned peers = __match_any_sync(kFullMask, gkey);
  const bool lead = gkey >= 0 && (__ffs(peers) - 1) == lane_id();
  const unsigned leaders = __ballot_sync(kFullMask, lead);
  return {leaders, __popc(leaders) <= kMaxGroups};
}

// Adds v to base[index] (index is only used on lanes with gkey >= 0; lanes of a group share the target).
template <typename T>
__device__ __forceinline__ void grouped_add(const WarpGroups& g, int gkey, T* base, int64_t index, T v) {
  if (g.few) {
    unsigned todo = g.leaders;  // identical on every lane: the loop is warp-uniform
    while (todo) {
      const int l = __ffs(todo) - 1;
      todo &= todo - 1;
      const int kl = __shfl_sync(kFullMask, gkey, l);
      const T s = warp_sum(gkey == kl ? v : T(0));
      if (lane_id() == l) atomicAdd(base + index, s);
    }
  } else if (gkey >= 0) {
    atomicAdd(base + index, v);
  }
}

template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

// ---------------------------------------------------------------------------------------------------
// 1. Per-tile aggregation.

// Accumulates the tile's per-(j, channel) sums into acc (shared memory, or the tile's global partials).
// j4: tile-local ids of this thread's 4 pixels (-1 outside the image); s_pix_j: all pixels' j (NHWC).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void accumulate_tile(acc_t* acc, const scalar_t* __restrict__ feat_img, int64_t hw,
                                                int64_t p0, int valid_pix, int channels, bool channels_last,
                                                bool vec, const int (&j4)[kPixPerThread],
                                                const int16_t* s_pix_j) {
  const int tid = threadIdx.x;
  if (!channels_last) {
    // NCHW: a thread owns 4 consecutive pixels; the j pattern is the same for every channel.
    const int last = j4[kPixPerThread - 1];
    const WarpGroups g = warp_groups(last);
    const bool full = vec && (tid + 1) * kPixPerThread <= valid_pix;
    const scalar_t* base = feat_img + p0 + tid * kPixPerThread;
    auto load = [&](int c, acc_t (&v)[kPixPerThread]) {
      const scalar_t* src = base + static_cast<int64_t>(c) * hw;
      if (full) {
        const Pack4<scalar_t> pk = *reinterpret_cast<const Pack4<scalar_t>*>(src);
#pragma unroll
        for (int i = 0; i < kPixPerThread; ++i) v[i] = static_cast<acc_t>(pk.v[i]);
      } else {
#pragma unroll
        for (int i = 0; i < kPixPerThread; ++i)
          v[i] = j4[i] >= 0 ? static_cast<acc_t>(src[i]) : acc_t(0);
      }
    };
    acc_t next[kPixPerThread];
    if (channels > 0) load(0, next);
    for (int c = 0; c < channels; ++c) {
      acc_t v[kPixPerThread];
#pragma unroll
      for (int i = 0; i < kPixPerThread; ++i) v[i] = next[i];
      if (c + 1 < channels) load(c + 1, next);  // keep the next load in flight behind this channel's atomics
      int cur = j4[0];
      acc_t s = v[0];
#pragma unroll
      for (int i = 1; i < kPixPerThread; ++i) {
        if (j4[i] != cur) {
          if (cur >= 0) atomicAdd(acc + static_cast<int64_t>(cur) * channels + c, s);
          cur = j4[i];
          s = acc_t(0);
        }
        s += v[i];
      }
      grouped_add(g, cur, acc, static_cast<int64_t>(cur) * channels + c, s);
    }
    return;
  }
  // NHWC: the tile is a contiguous [valid_pix, C] block. A thread keeps one channel and walks pixels
  // `rows` apart, so loads stay coalesced and a run of equal j is summed in a register.
  const scalar_t* tile_base = feat_img + p0 * channels;
  if (channels <= kThreads) {
    const int rows = kThreads / channels;
    const int c = tid % channels;
    const int r = tid / channels;
    const bool active = r < rows;
    const int steps = (kTile + rows - 1) / rows;
    int cur = -1;
    acc_t s = acc_t(0);
    for (int k0 = 0; k0 < steps; k0 += 4) {
      acc_t v[4];
      int jj[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int p = r + (k0 + u) * rows;
        const bool ok = active && k0 + u < steps && p < valid_pix;
        jj[u] = ok ? s_pix_j[p] : -1;
        v[u] = ok ? static_cast<acc_t>(tile_base[static_cast<int64_t>(p) * channels + c]) : acc_t(0);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (jj[u] < 0) continue;
        if (jj[u] != cur) {
          if (cur >= 0) atomicAdd(acc + static_cast<int64_t>(cur) * channels + c, s);
          cur = jj[u];
          s = acc_t(0);
        }
        s += v[u];
      }
    }
    const int gkey = cur >= 0 ? cur * channels + c : -1;
    grouped_add(warp_groups(gkey), gkey, acc, static_cast<int64_t>(gkey), s);
  } else {
    for (int c0 = 0; c0 < channels; c0 += kThreads) {
      const int c = c0 + tid;
      const bool active = c < channels;
      int cur = -1;
      acc_t s = acc_t(0);
      for (int p = 0; p < valid_pix; ++p) {
        if (!active) continue;
        const int jj = s_pix_j[p];
        const acc_t v = static_cast<acc_t>(tile_base[static_cast<int64_t>(p) * channels + c]);
        if (jj != cur) {
          if (cur >= 0) atomicAdd(acc + static_cast<int64_t>(cur) * channels + c, s);
          cur = jj;
          s = acc_t(0);
        }
        s += v;
      }
      // Lanes hold different channels: no two share a target, so add directly.
      if (cur >= 0) atomicAdd(acc + static_cast<int64_t>(cur) * channels + c, s);
    }
  }
}

// grid (tiles_per_image, N), block kThreads. Partials of tile t (global index n * tiles_per_image + tile):
// part_keys[t*S + j], part_cnt[t*S + j], part_sums[(t*S + j)*C + c] for j < part_num[t], where the stride
// S = part_stride = min(H*W, kTile) bounds the distinct ids of any tile (small images need less than kTile).
template <typename scalar_t, typename acc_t, typename id_t>
__global__ void __launch_bounds__(kThreads)
    tile_pool_kernel(const scalar_t* __restrict__ feat, const id_t* __restrict__ ids, int64_t hw,
                     int channels, int tiles_per_image, int part_stride, bool channels_last, bool vec,
                     unsigned long long* __restrict__ part_keys, int* __restrict__ part_cnt,
                     acc_t* __restrict__ part_sums, int* __restrict__ part_num) {
  __shared__ unsigned long long s_keys[kTileTable + 1];
  __shared__ int16_t s_slot_j[kTileTable + 1];
  __shared__ int16_t s_pix_j[kTile];
  __shared__ int s_cnt[kTile];
  __shared__ alignas(16) unsigned char s_sum_raw[kSumBytes];
  __shared__ int s_num;

  const int tid = threadIdx.x;
  const int n = blockIdx.y;
  const int64_t t_global = static_cast<int64_t>(n) * tiles_per_image + blockIdx.x;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int valid_pix = static_cast<int>(hw - p0 < kTile ? hw - p0 : kTile);

  for (int i = tid; i <= kTileTable; i += kThreads) s_keys[i] = 0ull;
  if (tid == 0) s_num = 0;
  __syncthreads();

  // Tile-local dedupe: the claiming thread numbers the id and records its key in the partials.
  const id_t* ids_tile = ids + static_cast<int64_t>(n) * hw + p0;
  unsigned long long* keys_out = part_keys + t_global * part_stride;
  uint32_t slot[kPixPerThread];
#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i) {
    const int p = tid * kPixPerThread + i;
    const bool valid = p < valid_pix;
    const uint64_t key = valid ? id_key(ids_tile[p]) : 0ull;
    bool won;
    slot[i] = warp_find_or_claim(s_keys, kTileTable, key, valid, won);
    if (won) {
      const int j = atomicAdd(&s_num, 1);
      s_slot_j[slot[i]] = static_cast<int16_t>(j);
      keys_out[j] = key;
    }
  }
  __syncthreads();
  const int num = s_num;
  int j4[kPixPerThread];
#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i) {
    const int p = tid * kPixPerThread + i;
    j4[i] = p < valid_pix ? s_slot_j[slot[i]] : -1;
    if (p < valid_pix) s_pix_j[p] = static_cast<int16_t>(j4[i]);
  }
  const int64_t nsum = static_cast<int64_t>(num) * channels;
  const bool in_smem = nsum * static_cast<int64_t>(sizeof(acc_t)) <= kSumBytes;
  acc_t* s_sum = reinterpret_cast<acc_t*>(s_sum_raw);
  acc_t* g_sum = part_sums + t_global * part_stride * channels;
  for (int i = tid; i < num; i += kThreads) s_cnt[i] = 0;
  if (in_smem) {
    for (int64_t i = tid; i < nsum; i += kThreads) s_sum[i] = acc_t(0);
  } else {
    for (int64_t i = tid; i < nsum; i += kThreads) g_sum[i] = acc_t(0);
  }
  __syncthreads();

  {  // counts: runs of equal j within the thread's pixels, then one add per warp group
    int cur = j4[0];
    int run = cur >= 0 ? 1 : 0;
#pragma unroll
    for (int i = 1; i < kPixPerThread; ++i) {
      if (j4[i] != cur) {
        if (cur >= 0) atomicAdd(&s_cnt[cur], run);
        cur = j4[i];
        run = 0;
      }
      run += j4[i] >= 0 ? 1 : 0;
    }
    grouped_add(warp_groups(cur), cur, s_cnt, cur, run);
  }
  const scalar_t* feat_img = feat + static_cast<int64_t>(n) * channels * hw;
  if (in_smem) {
    accumulate_tile(s_sum, feat_img, hw, p0, valid_pix, channels, channels_last, vec, j4, s_pix_j);
  } else {
    accumulate_tile(g_sum, feat_img, hw, p0, valid_pix, channels, channels_last, vec, j4, s_pix_j);
  }
  __syncthreads();

  for (int i = tid; i < num; i += kThreads) part_cnt[t_global * part_stride + i] = s_cnt[i];
  if (in_smem) {
    for (int64_t i = tid; i < nsum; i += kThreads) g_sum[i] = s_sum[i];
  }
  if (tid == 0) part_num[t_global] = num;
}

// ---------------------------------------------------------------------------------------------------
// 2. Size and zero each image's global table (probe slots + the reserved slot).

// grid (blocks, N), block kThreads. Every block recomputes U for its image (tiles_per_image small ints).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    table_init_kernel(const int* __restrict__ part_num, int tiles_per_image, uint32_t cap_max, int channels,
                      int64_t table_stride, unsigned long long* __restrict__ keys, int* __restrict__ cnt,
                      acc_t* __restrict__ sums, uint32_t* __restrict__ caps) {
  __shared__ long long s_red[kThreads / 32];
  const int n = blockIdx.y;
  long long local = 0;
  for (int t = threadIdx.x; t < tiles_per_image; t += kThreads)
    local += part_num[static_cast<int64_t>(n) * tiles_per_image + t];
  local = warp_sum(local);
  if (lane_id() == 0) s_red[threadIdx.x / 32] = local;
  __syncthreads();
  long long u = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) u += s_red[w];
  const long long want = u + u / 2 + 1;  // load factor <= 2/3 (U bounds the number of distinct ids)
  const uint32_t cap = want < static_cast<long long>(cap_max) ? static_cast<uint32_t>(want) : cap_max;
  if (blockIdx.x == 0 && threadIdx.x == 0) caps[n] = cap;

  const int64_t slots = static_cast<int64_t>(cap) + 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  unsigned long long* k_n = keys + n * table_stride;
  int* c_n = cnt + n * table_stride;
  acc_t* s_n = sums + n * table_stride * channels;
  for (int64_t i = first; i < slots; i += stride) {
    k_n[i] = 0ull;
    c_n[i] = 0;
  }
  for (int64_t i = first; i < slots * channels; i += stride) s_n[i] = acc_t(0);
}

// ---------------------------------------------------------------------------------------------------
// 3. Merge tile partials into the image's table.

constexpr int kMergeChunk = 32;                   // partials of one tile handled by one warp
constexpr int kMergeChunks = kTile / kMergeChunk;  // warps per 32-tile group

// grid (ceil(groups * kMergeChunks / warps_per_block), N). Warp -> (group of 32 tiles, chunk of j); lane l
// takes tile group*32 + l, so lanes holding the same key (a region crossing many tiles) combine by shuffles.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const unsigned long long* __restrict__ part_keys, const int* __restrict__ part_cnt,
                 const acc_t* __restrict__ part_sums, const int* __restrict__ part_num, int tiles_per_image,
                 int part_stride, int channels, int64_t table_stride, unsigned long long* __restrict__ keys,
                 int* __restrict__ cnt, acc_t* __restrict__ sums, const uint32_t* __restrict__ caps) {
  const int n = blockIdx.y;
  const int groups = (tiles_per_image + 31) / 32;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (warp >= static_cast<int64_t>(groups) * kMergeChunks) return;  // whole warps leave together
  const int group = static_cast<int>(warp % groups);
  const int chunk = static_cast<int>(warp / groups);
  const int tile = group * 32 + lane_id();
  const bool has_tile = tile < tiles_per_image;
  const int64_t t_global = static_cast<int64_t>(n) * tiles_per_image + tile;
  const int num = has_tile ? part_num[t_global] : 0;
  int max_num = num;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) max_num = max(max_num, __shfl_xor_sync(kFullMask, max_num, o));

  const uint32_t cap = caps[n];
  unsigned long long* k_n = keys + n * table_stride;
  int* c_n = cnt + n * table_stride;
  acc_t* s_n = sums + n * table_stride * channels;
  for (int jj = 0; jj < kMergeChunk; ++jj) {
    const int j = chunk * kMergeChunk + jj;
    if (j >= max_num) break;  // warp-uniform
    const bool valid = j < num;
    const int64_t e = t_global * part_stride + j;
    const uint64_t key = valid ? part_keys[e] : 0ull;
    bool won;
    const uint32_t slot = warp_find_or_claim(k_n, cap, key, valid, won);
    const int gkey = valid ? static_cast<int>(slot) : -1;
    const WarpGroups g = warp_groups(gkey);
    grouped_add(g, gkey, c_n, slot, valid ? part_cnt[e] : 0);
    for (int c = 0; c < channels; ++c)
      grouped_add(g, gkey, s_n, static_cast<int64_t>(slot) * channels + c,
                  valid ? part_sums[e * channels + c] : acc_t(0));
  }
}

// ---------------------------------------------------------------------------------------------------
// 4. Broadcast the means.

// grid (tiles_per_image, N), block kThreads.
template <typename scalar_t, typename acc_t, typename id_t>
__global__ void __launch_bounds__(kThreads)
    write_kernel(const id_t* __restrict__ ids, int64_t hw, int channels, bool channels_last, bool vec,
                 int64_t table_stride, const unsigned long long* __restrict__ keys,
                 const int* __restrict__ cnt, const acc_t* __restrict__ sums,
                 const uint32_t* __restrict__ caps, scalar_t* __restrict__ out) {
  __shared__ uint32_t s_slot[kTile];
  const int tid = threadIdx.x;
  const int n = blockIdx.y;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int valid_pix = static_cast<int>(hw - p0 < kTile ? hw - p0 : kTile);
  const uint32_t cap = caps[n];
  const unsigned long long* k_n = keys + n * table_stride;
  const int* c_n = cnt + n * table_stride;
  const acc_t* s_n = sums + n * table_stride * channels;

  const id_t* ids_tile = ids + static_cast<int64_t>(n) * hw + p0;
  uint32_t slot[kPixPerThread];
  uint64_t prev_key = 0;
  uint32_t prev_slot = kNotFound;
#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i) {
    const int p = tid * kPixPerThread + i;
    slot[i] = kNotFound;
    if (p < valid_pix) {
      const uint64_t key = id_key(ids_tile[p]);
      if (prev_slot == kNotFound || key != prev_key) {
        prev_slot = table_find(k_n, cap, key);
        prev_key = key;
      }
      slot[i] = prev_slot;
    }
  }
  if (!channels_last) {
    scalar_t* out_px = out + static_cast<int64_t>(n) * channels * hw + p0 + tid * kPixPerThread;
    const bool full = vec && (tid + 1) * kPixPerThread <= valid_pix;
    acc_t count[kPixPerThread];
#pragma unroll
    for (int i = 0; i < kPixPerThread; ++i) count[i] = slot[i] != kNotFound ? acc_t(c_n[slot[i]]) : acc_t(1);
    for (int c = 0; c < channels; ++c) {
      scalar_t m[kPixPerThread];
#pragma unroll
      for (int i = 0; i < kPixPerThread; ++i) {
        const acc_t sum = slot[i] != kNotFound ? s_n[static_cast<int64_t>(slot[i]) * channels + c] : acc_t(0);
        m[i] = static_cast<scalar_t>(div_rn(sum, count[i]));
      }
      scalar_t* dst = out_px + static_cast<int64_t>(c) * hw;
      if (full) {
        Pack4<scalar_t> pk;
#pragma unroll
        for (int i = 0; i < kPixPerThread; ++i) pk.v[i] = m[i];
        *reinterpret_cast<Pack4<scalar_t>*>(dst) = pk;
      } else {
#pragma unroll
        for (int i = 0; i < kPixPerThread; ++i)
          if (tid * kPixPerThread + i < valid_pix) dst[i] = m[i];
      }
    }
    return;
  }
  // NHWC: write the tile's contiguous [valid_pix, C] block element-linearly (coalesced).
#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i) {
    const int p = tid * kPixPerThread + i;
    if (p < valid_pix) s_slot[p] = slot[i];
  }
  __syncthreads();
  scalar_t* out_tile = out + (static_cast<int64_t>(n) * hw + p0) * channels;
  const int64_t total = static_cast<int64_t>(valid_pix) * channels;
  for (int64_t e = tid; e < total; e += kThreads) {
    const int p = static_cast<int>(e / channels);
    const int c = static_cast<int>(e - static_cast<int64_t>(p) * channels);
    const uint32_t sl = s_slot[p];
    acc_t m = acc_t(0);
    if (sl != kNotFound) m = div_rn(s_n[static_cast<int64_t>(sl) * channels + c], acc_t(c_n[sl]));
    out_tile[e] = static_cast<scalar_t>(m);
  }
}

// ---------------------------------------------------------------------------------------------------
// Deterministic variant (torch.use_deterministic_algorithms(True)): the kernels above add floats with
// atomics, so the order of the additions, and with it the last bits of a mean, varies from run to run.
// Here every image's pixels are sorted by key (a stable sort, which is deterministic), one warp owns each
// run of equal keys and sums it in a fixed order (lane l takes elements l, l+32, ...; then a fixed
// butterfly), so the result is bitwise the same on every run. Slower (a sort and gathered loads), and a
// very large region is summed by one warp, but exact reproducibility is what the mode asks for.

// keys[i] = id_key(ids[i]) as int64, for the sort. 1-D grid-stride loop (no grid-size limit).
template <typename id_t>
__global__ void __launch_bounds__(kThreads)
    id_keys_kernel(const id_t* __restrict__ ids, int64_t total, int64_t* __restrict__ keys) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride)
    keys[i] = static_cast<int64_t>(id_key(ids[i]));
}

// sorted_keys, perm: [N, H*W], each row sorted (perm: the pixel index of each sorted element). Warp w
// (grid-stride) looks at sorted position w of the flattened [N, H*W]; when it starts a run of equal keys,
// the warp finds the run's end, and for each channel sums the run's features in a fixed order and writes
// the mean to every pixel of the run. Every warp-level branch depends only on w: the warp stays converged.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sorted_mean_kernel(const int64_t* __restrict__ sorted_keys, const int64_t* __restrict__ perm,
                       const scalar_t* __restrict__ feat, int64_t n_img, int64_t hw, int channels,
                       bool channels_last, scalar_t* __restrict__ out) {
  const int lane = lane_id();
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  const int64_t total = n_img * hw;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; w < total;
       w += warps_total) {
    const int64_t n = w / hw;
    const int64_t start = w - n * hw;
    const int64_t* k = sorted_keys + n * hw;
    const int64_t key = k[start];
    if (start > 0 && k[start - 1] == key) continue;  // not the first element of its run
    int64_t end = start + 1;
    while (true) {  // the run ends at the first different key (rows are sorted) or at the row's end
      const int64_t i = end + lane;
      const unsigned b = __ballot_sync(kFullMask, i >= hw || k[i] != key);
      if (b) {
        end += __ffs(b) - 1;
        break;
      }
      end += 32;
    }
    const int64_t* pm = perm + n * hw;
    const acc_t count = static_cast<acc_t>(end - start);
    for (int c = 0; c < channels; ++c) {
      auto idx = [&](int64_t p) {
        return channels_last ? (n * hw + p) * channels + c : (n * channels + c) * hw + p;
      };
      acc_t s = acc_t(0);
      for (int64_t i = start + lane; i < end; i += 32) s += static_cast<acc_t>(feat[idx(pm[i])]);
      s = warp_sum(s);  // a fixed butterfly: every lane ends with the same bits
      const scalar_t m = static_cast<scalar_t>(div_rn(s, count));
      for (int64_t i = start + lane; i < end; i += 32) out[idx(pm[i])] = m;
    }
  }
}

#endif  // __CUDACC__

}  // namespace iap
}  // namespace pix2pixhd_fast
