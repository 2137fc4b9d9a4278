// block_sparse_attention forward for Hopper (sm_90a): TMA-fed warpgroup MMAs over the runs of a tile layout.
//
// One CTA per (query tile of 128 rows, q head, batch row), 288 threads:
//  * warp 8 (the producer): one lane loads the Q tile once and then, for every 128-key chunk the tile
//    visits, the K and V chunk into a ring of STAGES shared-memory slots (TMA, 128-byte swizzle);
//  * warps 0-7 (two consumer warpgroups, 64 query rows each): per chunk S = Q K^T (wgmma, both operands
//    in shared memory), the mask on partial chunks, online softmax in fp32 (log2 domain), then
//    O += P V (wgmma, P from registers as the A operand, V transposed from shared memory); each warp
//    frees the slot when done.
// The chunks are walked from the layout's runs (masks/layout.py): a run of key tiles [start, end) becomes
// ceil(keys / 128) chunks; chunks of FULL runs that lie wholly inside the run skip all mask work; the
// others test each element (the run's end and S, the level rule, or the bitmaps). The layout's query tile
// must be 128 rows and its key tile a divisor of 128, so the same layout also serves the Triton backward.
// Out-of-range rows of Q/K/V read as zeros (TMA bounds), out-of-range rows of out are never written.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "common/sm90_async.cuh"
#include "common/status.hpp"
#include "ops/block_sparse_attention/block_sparse_attention.cuh"

namespace ark {
namespace {

constexpr int BM = kBsaCudaBlockQ;  // query rows per CTA
constexpr int BN = kBsaCudaChunk;   // keys per chunk
constexpr int kConsumerWarps = 8;
constexpr int kThreads = (kConsumerWarps + 1) * 32;
constexpr int kPanelCols = 64;      // 128-byte rows of 16-bit elements: one swizzle panel
constexpr uint32_t kSwizzleRowBytes = 128;

template <int D, int STAGES>
struct Smem {
  static constexpr int kPanels = D / kPanelCols;
  static constexpr uint32_t kQBytes = BM * D * 2;
  static constexpr uint32_t kChunkBytes = BN * D * 2;  // one K or one V chunk
  static constexpr uint32_t kQ = 0;
  static constexpr uint32_t kK = kQ + kQBytes;
  static constexpr uint32_t kV = kK + STAGES * kChunkBytes;
  static constexpr uint32_t kBars = kV + STAGES * kChunkBytes;  // q_full, k_full[S], v_full[S], empty[S]
  static constexpr uint32_t kBytes = kBars + (1 + 3 * STAGES) * 8;
  static constexpr uint32_t kLaunchBytes = kBytes + 1024;  // room to align the base to 1024 bytes
};

struct Rule {
  const int32_t *q_level, *k_level, *q_doc, *k_doc, *q_group, *k_group;
  int32_t window;
};

struct KernelArgs {
  void* out;
  float* lse;
  int64_t L, S;
  int Hq, group;  // group: q heads per kv head
  float scale_log2, scale;
  const int32_t* q_run_ptr;
  const int32_t* q_runs;
  const int32_t* tile_bits;
  int block_k, bits_words;  // bitmap words per row: ceil(block_k / 32)
  Rule rule;
};

// The chunk sequence of one query tile, identical in the producer and every consumer thread.
struct ChunkCursor {
  const int32_t* runs;
  int r, r_end;
  int key, key_end;  // this chunk starts at `key`; the run's keys end at key_end (clipped to S)
  int kind, bits, run_key0;

  __device__ void load_run(int S, int block_k) {
    const int start = runs[4 * r], end = runs[4 * r + 1];
    kind = runs[4 * r + 2];
    bits = runs[4 * r + 3];
    run_key0 = start * block_k;
    key = run_key0;
    key_end = min(end * block_k, S);
  }
  __device__ void init(const KernelArgs& a, int tile) {
    runs = a.q_runs;
    r = a.q_run_ptr[tile];
    r_end = a.q_run_ptr[tile + 1];
    if (r < r_end) load_run(int(a.S), a.block_k);
  }
  __device__ bool valid() const { return r < r_end; }
  __device__ void next(const KernelArgs& a) {
    key += BN;
    if (key >= key_end) {
      ++r;
      if (r < r_end) load_run(int(a.S), a.block_k);
    }
  }
  // FULL and the whole chunk inside the run: no element needs a test.
  __device__ bool unmasked() const { return kind == 0 && key + BN <= key_end; }
};

// Visibility of (row, col) in a chunk that needs tests. q_* hold the row's rule values.
__device__ __forceinline__ bool visible(const KernelArgs& a, const ChunkCursor& c, int row_in_tile, int col, int ql,
                                        int qd, int qg) {
  if (col >= c.key_end) return false;
  if (c.kind == 1) {
    const Rule& r = a.rule;
    const int kl = r.k_level[col];
    bool ok = kl <= ql && (r.window < 0 || ql - kl < r.window);
    if (r.k_group) ok = ok || qg == r.k_group[col];
    if (r.k_doc) ok = ok && qd == r.k_doc[col];
    return ok;
  }
  if (c.kind == 2) {
    const int in_run = col - c.run_key0;
    const int tile = c.bits + in_run / a.block_k;
    const int k_in_tile = in_run % a.block_k;
    const int64_t word = (int64_t(tile) * BM + row_in_tile) * a.bits_words + (k_in_tile >> 5);
    return (a.tile_bits[word] >> (k_in_tile & 31)) & 1;
  }
  return true;  // FULL, only the run's end and S to respect
}

template <typename T> struct Pack2;
template <> struct Pack2<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <> struct Pack2<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <typename T, int N> struct Mma;
template <int N> struct Mma<__nv_bfloat16, N> {
  static __device__ __forceinline__ void ss(float (&d)[N / 2], uint64_t a, uint64_t b, int acc) {
    if constexpr (N == 128) sm90::wgmma_ss_m64n128k16_bf16(d, a, b, acc);
    else sm90::wgmma_ss_m64n64k16_bf16(d, a, b, acc);
  }
  static __device__ __forceinline__ void rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int acc) {
    if constexpr (N == 128) sm90::wgmma_rs_m64n128k16_bf16_tb(d, a, b, acc);
    else sm90::wgmma_rs_m64n64k16_bf16_tb(d, a, b, acc);
  }
};
template <int N> struct Mma<__half, N> {
  static __device__ __forceinline__ void ss(float (&d)[N / 2], uint64_t a, uint64_t b, int acc) {
    if constexpr (N == 128) sm90::wgmma_ss_m64n128k16_f16(d, a, b, acc);
    else sm90::wgmma_ss_m64n64k16_f16(d, a, b, acc);
  }
  static __device__ __forceinline__ void rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int acc) {
    if constexpr (N == 128) sm90::wgmma_rs_m64n128k16_f16_tb(d, a, b, acc);
    else sm90::wgmma_rs_m64n64k16_f16_tb(d, a, b, acc);
  }
};

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <typename T, int D, int STAGES>
__device__ void producer(const KernelArgs& a, uint8_t* smem, const CUtensorMap* tq, const CUtensorMap* tk,
                         const CUtensorMap* tv, int tile, int h, int hk, int b) {
  using L = Smem<D, STAGES>;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBars);
  uint64_t* q_full = bars;
  uint64_t* k_full = bars + 1;
  uint64_t* v_full = bars + 1 + STAGES;
  uint64_t* empty = bars + 1 + 2 * STAGES;
  sm90::mbar_arrive_expect_tx(q_full, L::kQBytes);
  for (int p = 0; p < L::kPanels; ++p)
    sm90::tma_load_4d(smem + L::kQ + p * BM * kSwizzleRowBytes, tq, q_full, p * kPanelCols, tile * BM, h, b);
  ChunkCursor c;
  c.init(a, tile);
  for (int it = 0; c.valid(); ++it, c.next(a)) {
    const int s = it % STAGES;
    if (it >= STAGES) sm90::mbar_wait(&empty[s], ((it / STAGES) - 1) & 1);
    sm90::mbar_arrive_expect_tx(&k_full[s], L::kChunkBytes);
    for (int p = 0; p < L::kPanels; ++p)
      sm90::tma_load_4d(smem + L::kK + s * L::kChunkBytes + p * BN * kSwizzleRowBytes, tk, &k_full[s],
                        p * kPanelCols, c.key, hk, b);
    sm90::mbar_arrive_expect_tx(&v_full[s], L::kChunkBytes);
    for (int p = 0; p < L::kPanels; ++p)
      sm90::tma_load_4d(smem + L::kV + s * L::kChunkBytes + p * BN * kSwizzleRowBytes, tv, &v_full[s],
                        p * kPanelCols, c.key, hk, b);
  }
}

template <typename T, int D, int STAGES>
__device__ void consumer(const KernelArgs& a, uint8_t* smem, int tile, int h, int b) {
  using L = Smem<D, STAGES>;
  using M = Mma<T, BN>;
  using MO = Mma<T, D>;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBars);
  uint64_t* q_full = bars;
  uint64_t* k_full = bars + 1;
  uint64_t* v_full = bars + 1 + STAGES;
  uint64_t* empty = bars + 1 + 2 * STAGES;

  const int wg = threadIdx.x / 128;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  // This thread's two rows of the m64nNk16 accumulator: r and r + 8 inside its warp's 16 rows; its
  // columns: 8 j + 2 (lane % 4) + {0, 1} for every 8-column block j.
  const int row0_in_tile = wg * 64 + warp * 16 + lane / 4;
  const int row0 = tile * BM + row0_in_tile;
  const int col_in_block = 2 * (lane % 4);

  int ql[2] = {0, 0}, qd[2] = {0, 0}, qg[2] = {0, 0};
  if (a.rule.q_level) {
    for (int i = 0; i < 2; ++i) {
      const int row = row0 + 8 * i;
      if (row < a.L) {
        ql[i] = a.rule.q_level[row];
        if (a.rule.q_doc) qd[i] = a.rule.q_doc[row];
        if (a.rule.q_group) qg[i] = a.rule.q_group[row];
      }
    }
  }

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float s[BN / 2];

  sm90::mbar_wait(q_full, 0);
  const uint32_t q_base = sm90::smem_addr(smem + L::kQ) + wg * 64 * kSwizzleRowBytes;
  ChunkCursor c;
  c.init(a, tile);
  for (int it = 0; c.valid(); ++it, c.next(a)) {
    const int st = it % STAGES;
    const uint32_t parity = (it / STAGES) & 1;
    const uint32_t k_base = sm90::smem_addr(smem + L::kK + st * L::kChunkBytes);
    const uint32_t v_base = sm90::smem_addr(smem + L::kV + st * L::kChunkBytes);

    // S = Q K^T: 16-column k-steps, four per 64-column panel.
    sm90::mbar_wait(&k_full[st], parity);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // byte offset of the k-step inside its 128-byte row
      const uint64_t da = sm90::sw128_desc(q_base + (kk / 4) * BM * kSwizzleRowBytes + off, 16, 1024);
      const uint64_t db = sm90::sw128_desc(k_base + (kk / 4) * BN * kSwizzleRowBytes + off, 16, 1024);
      M::ss(s, da, db, kk > 0);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_operands(s);

    if (!c.unmasked()) {
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) {
        const int half = (i >> 1) & 1;  // 0: row r, 1: row r + 8
        const int col = c.key + 8 * (i >> 2) + col_in_block + (i & 1);
        if (!visible(a, c, row0_in_tile + 8 * half, col, ql[half], qd[half], qg[half])) s[i] = -INFINITY;
      }
    }

    // Online softmax on raw scores; exponents in the log2 domain with the scale folded in.
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    float alpha[2], neg_base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      // A row with nothing visible yet keeps m = -inf and uses base 0: its p = exp2(-inf) = 0.
      const float base = mx[r] == -INFINITY ? 0.f : mx[r];
      alpha[r] = sm90::ex2((m[r] - base) * a.scale_log2);  // m = -inf: 0 (and o, l are 0 anyway)
      neg_base[r] = -base * a.scale_log2;
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
    uint32_t p[BN / 16][4];
#pragma unroll
    for (int i = 0; i < BN / 2; i += 2) {
      const int r = (i >> 1) & 1;
      const float p0 = sm90::ex2(fmaf(s[i], a.scale_log2, neg_base[r]));
      const float p1 = sm90::ex2(fmaf(s[i + 1], a.scale_log2, neg_base[r]));
      l[r] += p0 + p1;
      // Accumulators 8 kk .. 8 kk + 7 hold keys 16 kk .. 16 kk + 15: the A fragment of k-step kk, pair (i/2) % 4.
      p[i / 8][(i / 2) % 4] = Pack2<T>::pack(p0, p1);
    }
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i >> 1) & 1];

    // O += P V: V (keys x D) is the MN-major B operand; 16 keys per k-step = 2048 bytes of each panel.
    sm90::mbar_wait(&v_full[st], parity);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint64_t db = sm90::sw128_desc(v_base + kk * 16 * kSwizzleRowBytes, BN * kSwizzleRowBytes, 1024);
      MO::rs(o, p[kk], db, 1);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_operands(o);
    __syncwarp();
    if (lane == 0) sm90::mbar_arrive(&empty[st]);
  }

  // Normalise and store; lse = scale * m + ln(l), -inf (and out 0) for a row that saw nothing.
  T* out = static_cast<T*>(a.out);
  const int64_t bh = int64_t(b) * a.Hq + h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lr = quad_sum(l[r]);
    const int row = row0 + 8 * r;
    const float inv = lr > 0.f ? 1.f / lr : 0.f;
    if (row < a.L) {
      T* dst = out + (bh * a.L + row) * D + col_in_block;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        const uint32_t v = Pack2<T>::pack(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
        *reinterpret_cast<uint32_t*>(dst + 8 * j) = v;
      }
      if (a.lse && (lane % 4) == 0) a.lse[bh * a.L + row] = lr > 0.f ? a.scale * m[r] + logf(lr) : -INFINITY;
    }
  }
}

template <typename T, int D, int STAGES>
__global__ void __launch_bounds__(kThreads, 1)
    block_sparse_attention_fwd_sm90_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                                           const __grid_constant__ CUtensorMap tv, const KernelArgs a) {
#if ARK_SM90A_DEVICE
  using L = Smem<D, STAGES>;
  extern __shared__ uint8_t smem_raw[];
  // 128-byte swizzled tiles must start on 1024-byte boundaries (the descriptors assume base offset 0).
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  // Heaviest query tiles (under causal-like masks: the last) first, so the tail of the grid is short.
  const int tile = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  if (threadIdx.x == 0) {
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBars);
    sm90::mbar_init(&bars[0], 1);
    for (int s = 0; s < STAGES; ++s) {
      sm90::mbar_init(&bars[1 + s], 1);
      sm90::mbar_init(&bars[1 + STAGES + s], 1);
      sm90::mbar_init(&bars[1 + 2 * STAGES + s], kConsumerWarps);
    }
    sm90::mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x / 32 == kConsumerWarps) {
    if (threadIdx.x % 32 == 0) producer<T, D, STAGES>(a, smem, &tq, &tk, &tv, tile, h, h / a.group, b);
  } else {
    consumer<T, D, STAGES>(a, smem, tile, h, b);
  }
#endif
}

// Rows with no key at all (S == 0): out 0, lse -inf.
__global__ void fill_lse_neg_inf(float* lse, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) lse[i] = -INFINITY;
}

// ---- host side ----

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      return PFN_cuTensorMapEncodeTiled_v12000(nullptr);
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// (D, rows, heads, batch) view of a (batch, heads, rows, D) tensor; boxes of 64 columns x box_rows rows.
ark_status make_tensor_map(CUtensorMap* map, const char* name, const void* base, ark_dtype dtype, int D, int64_t rows,
                           int64_t heads, int64_t batch, const int64_t strides[3], int box_rows) {
  const auto encode = tensor_map_encoder();
  if (!encode) return fail(ARK_ERROR_CUDA, "%s: the driver has no cuTensorMapEncodeTiled (CUDA 12 driver needed)", name);
  // A dimension of size 1 never uses its stride: give it one TMA accepts (a multiple of 16 bytes).
  const int64_t fallback = rows * D;
  const int64_t s_row = rows > 1 ? strides[2] : D;
  const int64_t s_head = heads > 1 ? strides[1] : fallback;
  const int64_t s_batch = batch > 1 ? strides[0] : fallback * heads;
  cuuint64_t dims[4] = {cuuint64_t(D), cuuint64_t(rows), cuuint64_t(heads), cuuint64_t(batch)};
  cuuint64_t byte_strides[3] = {cuuint64_t(s_row) * 2, cuuint64_t(s_head) * 2, cuuint64_t(s_batch) * 2};
  for (int i = 0; i < 3; ++i)
    if (byte_strides[i] == 0 || byte_strides[i] % 16 != 0 || byte_strides[i] >= (cuuint64_t(1) << 40))
      return fail(ARK_ERROR_INVALID_ARGUMENT,
                  "%s: expected nonzero strides that are multiples of 8 elements (TMA), got (%lld, %lld, %lld)", name,
                  (long long)strides[0], (long long)strides[1], (long long)strides[2]);
  cuuint32_t box[4] = {kPanelCols, cuuint32_t(box_rows), 1, 1};
  cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r = encode(map, dtype == ARK_BFLOAT16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                            4, const_cast<void*>(base), dims, byte_strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return fail(ARK_ERROR_CUDA, "%s: cuTensorMapEncodeTiled failed (CUresult %d)", name, int(r));
  return ARK_SUCCESS;
}

constexpr int kStages = 2;

template <typename T, int D>
ark_status launch(const BlockSparseAttentionFwdParams& p, cudaStream_t stream) {
  using L = Smem<D, kStages>;
  CUtensorMap tq, tk, tv;
  const ark_dtype dt = std::is_same<T, __nv_bfloat16>::value ? ARK_BFLOAT16 : ARK_FLOAT16;
  ARK_TRY(make_tensor_map(&tq, "q", p.q, dt, D, p.L, p.q_heads, p.batch, p.q_strides, BM));
  ARK_TRY(make_tensor_map(&tk, "k", p.k, dt, D, p.S, p.kv_heads, p.batch, p.k_strides, BN));
  ARK_TRY(make_tensor_map(&tv, "v", p.v, dt, D, p.S, p.kv_heads, p.batch, p.v_strides, BN));
  KernelArgs a;
  a.out = p.out;
  a.lse = p.lse;
  a.L = p.L;
  a.S = p.S;
  a.Hq = int(p.q_heads);
  a.group = int(p.q_heads / p.kv_heads);
  a.scale = p.scale;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.q_run_ptr = p.mask.q_run_ptr;
  a.q_runs = p.mask.q_runs;
  a.tile_bits = p.mask.tile_bits;
  a.block_k = p.mask.block_k;
  a.bits_words = (p.mask.block_k + 31) / 32;
  a.rule = Rule{p.mask.q_level, p.mask.k_level, p.mask.q_doc, p.mask.k_doc, p.mask.q_group, p.mask.k_group,
                p.mask.window};
  auto kernel = block_sparse_attention_fwd_sm90_kernel<T, D, kStages>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::kLaunchBytes));
  if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "block_sparse_attention: %s", cudaGetErrorString(err));
  const dim3 grid(unsigned((p.L + BM - 1) / BM), unsigned(p.q_heads), unsigned(p.batch));
  kernel<<<grid, kThreads, L::kLaunchBytes, stream>>>(tq, tk, tv, a);
  err = cudaGetLastError();
  if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "block_sparse_attention: %s", cudaGetErrorString(err));
  return ARK_SUCCESS;
}

// The kernel instance has sm_90a code (the library may be built without 90a, and PTX of another target
// would JIT to an empty kernel on this GPU).
template <typename T, int D>
bool has_sm90a_code() {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, block_sparse_attention_fwd_sm90_kernel<T, D, kStages>) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.ptxVersion == 90 && attr.binaryVersion == 90;
}

bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return false;
  return major == 9 && minor == 0;
}

}  // namespace

bool block_sparse_attention_cuda_supported(int head_dim, int block_q, int block_k, ark_dtype dtype) {
  if (!((head_dim == 64 || head_dim == 128) && (dtype == ARK_BFLOAT16 || dtype == ARK_FLOAT16) && block_q == BM &&
        block_k >= 1 && BN % block_k == 0 && device_is_sm90()))
    return false;
  if (dtype == ARK_BFLOAT16) return head_dim == 64 ? has_sm90a_code<__nv_bfloat16, 64>() : has_sm90a_code<__nv_bfloat16, 128>();
  return head_dim == 64 ? has_sm90a_code<__half, 64>() : has_sm90a_code<__half, 128>();
}

ark_status block_sparse_attention_fwd_cuda(const BlockSparseAttentionFwdParams& p, ark_dtype dtype, void* stream_ptr) {
  if (!block_sparse_attention_cuda_supported(p.head_dim, p.mask.block_q, p.mask.block_k, dtype))
    return fail(ARK_ERROR_INVALID_ARGUMENT,
                "block_sparse_attention: the CUDA kernel needs an sm_90 GPU, bf16/fp16, head_dim 64 or 128, block_q %d "
                "and block_k dividing %d; got head_dim %d, dtype %d, tiling %d x %d",
                BM, BN, p.head_dim, int(dtype), p.mask.block_q, p.mask.block_k);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.batch == 0 || p.q_heads == 0 || p.L == 0) return ARK_SUCCESS;
  if (p.S == 0) {  // no keys: TMA cannot describe an empty tensor, and there is nothing to attend to
    const int64_t rows = p.batch * p.q_heads * p.L;
    cudaError_t err = cudaMemsetAsync(p.out, 0, size_t(rows) * p.head_dim * 2, stream);
    if (err == cudaSuccess && p.lse) {
      fill_lse_neg_inf<<<unsigned((rows + 255) / 256), 256, 0, stream>>>(p.lse, rows);
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "block_sparse_attention: %s", cudaGetErrorString(err));
    return ARK_SUCCESS;
  }
  if (p.q_heads > 65535 || p.batch > 65535)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "q: expected at most 65535 heads and batch rows, got %lld and %lld",
                (long long)p.q_heads, (long long)p.batch);
  if (p.S >= (int64_t(1) << 31) - BN || p.L >= (int64_t(1) << 31) - BM)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "L, S: expected < 2^31 - 128, got %lld, %lld", (long long)p.L,
                (long long)p.S);
  if (dtype == ARK_BFLOAT16)
    return p.head_dim == 64 ? launch<__nv_bfloat16, 64>(p, stream) : launch<__nv_bfloat16, 128>(p, stream);
  return p.head_dim == 64 ? launch<__half, 64>(p, stream) : launch<__half, 128>(p, stream);
}

}  // namespace ark
