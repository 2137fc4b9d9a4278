// The Hopper building blocks of the block_sparse_attention forward, one at a time, on an sm_90 GPU (skipped
// elsewhere): TMA loads with the 128-byte swizzle (csrc/common/sm90_tma_host.hpp), S = Q K^T by shared-memory
// wgmma with K-major descriptors (issue_qk), O = P V with P as register fragments and V as the transposed
// operand (to_fragments, issue_pv), and the accumulator placement (bsa_walk::acc_row / acc_col), each
// against a CPU matmul, at head dims 64 and 128; and the dK / dV kernel's fused dQ step (store_ds_t: dS^T into a
// swizzled shared tile; dq_block: dS K with both operands MN-major and K = 128 keys; stage_dq_block and the TMA
// reduce-add of the staged fp32 tile). When an attention kernel's C test fails, this says whether the fault is in one of these pieces
// or in the attention logic around them.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "capi_test_util.hpp"
#include "common/sm90_tma_host.hpp"
#include "ops/block_sparse_attention/block_sparse_attention_dkdv_sm90.cuh"
#include "ops/block_sparse_attention/block_sparse_attention_sm90.cuh"

namespace {

using namespace ark::bsa_sm90;
using T = __nv_bfloat16;
constexpr int kRows = 128;  // query rows (two warpgroups) = keys of one chunk

// The block's barrier initialised for one arrival (plus TMA bytes); returns the dynamic shared memory,
// aligned to 1024 bytes as the 128-byte swizzle needs.
__device__ uint8_t* setup(uint64_t* bar) {
  extern __shared__ uint8_t raw[];
  if (threadIdx.x == 0) {
    ark::sm90::mbar_init(bar, 1);
    ark::sm90::mbar_init_fence();
  }
  __syncthreads();
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023));
}

// Q (128 x D) and K (128 x D) through TMA; S = Q K^T written out by accumulator position.
template <int D>
__global__ void __launch_bounds__(256) qk_kernel(const __grid_constant__ CUtensorMap tq,
                                                 const __grid_constant__ CUtensorMap tk, float* s_out) {
#if ARK_SM90A_DEVICE
  __shared__ uint64_t bar;
  uint8_t* q = setup(&bar);
  uint8_t* k = q + kRows * D * 2;
  if (threadIdx.x == 0) {
    ark::sm90::mbar_arrive_expect_tx(&bar, 2 * kRows * D * 2);
    for (int p = 0; p < D / 64; ++p) {
      ark::sm90::tma_load_4d(q + p * kRows * 128, &tq, &bar, p * 64, 0, 0, 0);
      ark::sm90::tma_load_4d(k + p * kRows * 128, &tk, &bar, p * 64, 0, 0, 0);
    }
  }
  ark::sm90::mbar_wait(&bar, 0);
  const int t = threadIdx.x;
  float s[BN / 2];
  ark::sm90::wgmma_fence();
  issue_qk<T, D>(s, ark::sm90::smem_addr(q) + (t / 128) * 64 * 128, ark::sm90::smem_addr(k));
  ark::sm90::wgmma_commit();
  ark::sm90::wgmma_wait<0>();
  ark::sm90::fence_operands(s);
  for (int i = 0; i < BN / 2; ++i) s_out[ark::bsa_walk::acc_row(t, i) * BN + ark::bsa_walk::acc_col(t, i)] = s[i];
#endif
}

// P (128 x 128, fp32 in global memory, read by accumulator position and rounded into fragments) times V
// (128 keys x D, TMA): O written out by accumulator position.
template <int D>
__global__ void __launch_bounds__(256) pv_kernel(const float* p_in, const __grid_constant__ CUtensorMap tv,
                                                 float* o_out) {
#if ARK_SM90A_DEVICE
  __shared__ uint64_t bar;
  uint8_t* v = setup(&bar);
  if (threadIdx.x == 0) {
    ark::sm90::mbar_arrive_expect_tx(&bar, kRows * D * 2);
    for (int p = 0; p < D / 64; ++p) ark::sm90::tma_load_4d(v + p * kRows * 128, &tv, &bar, p * 64, 0, 0, 0);
  }
  ark::sm90::mbar_wait(&bar, 0);
  const int t = threadIdx.x;
  float s[BN / 2], o[D / 2] = {};
  for (int i = 0; i < BN / 2; ++i) s[i] = p_in[ark::bsa_walk::acc_row(t, i) * BN + ark::bsa_walk::acc_col(t, i)];
  uint32_t frag[BN / 16][4];
  to_fragments<T>(s, frag);
  ark::sm90::wgmma_fence();
  issue_pv<T, D>(o, frag, ark::sm90::smem_addr(v));
  ark::sm90::wgmma_commit();
  ark::sm90::wgmma_wait<0>();
  ark::sm90::fence_operands(o);
  for (int i = 0; i < D / 2; ++i) o_out[ark::bsa_walk::acc_row(t, i) * D + ark::bsa_walk::acc_col(t, i)] = o[i];
#endif
}

// dS^T (128 keys x 64 queries, fp32 in global memory, read by accumulator position as the dK / dV kernel holds it)
// and K (128 keys x D, TMA): both warpgroups store their 64 keys' dS^T into one tile, each computes its column blocks
// of dS K (those of a step of parity `step`) and stages them; one thread adds the staged tile into dq_out (64 x D
// fp32, zeroed, through `tdq`) by TMA reduce-adds.
template <int D>
__global__ void __launch_bounds__(256) dq_kernel(const float* ds_t_in, const __grid_constant__ CUtensorMap tk,
                                                 const __grid_constant__ CUtensorMap tdq, int step) {
#if ARK_SM90A_DEVICE
  namespace dk = ark::bsa_dkdv;
  using L = dk::Smem<D, 2, true>;
  __shared__ uint64_t bar;
  uint8_t* k = setup(&bar);
  uint8_t* ds_tile = k + kRows * D * 2;          // 16 KB, 1024-aligned
  uint8_t* dq_tile = ds_tile + L::kDsBytes;      // QS x D fp32, 1024-aligned
  if (threadIdx.x == 0) {
    ark::sm90::mbar_arrive_expect_tx(&bar, kRows * D * 2);
    for (int p = 0; p < D / 64; ++p) ark::sm90::tma_load_4d(k + p * kRows * 128, &tk, &bar, p * 64, 0, 0, 0);
  }
  ark::sm90::mbar_wait(&bar, 0);
  const int t = threadIdx.x, wg = t / 128;
  float ds[dk::QS / 2];
  for (int i = 0; i < dk::QS / 2; ++i)
    ds[i] = ds_t_in[ark::bsa_walk::acc_row(t, i) * dk::QS + ark::bsa_walk::acc_col(t, i)];
  uint32_t dsf[dk::QS / 16][4];
  for (int i = 0; i < dk::QS / 2; i += 2) dsf[i / 8][(i / 2) % 4] = pack2<T>(ds[i], ds[i + 1]);
  dk::store_ds_t<T>(ark::sm90::smem_addr(ds_tile), dsf, t);
  __syncthreads();  // the kernel's ds_full barrier: both halves stored before either warpgroup reads the tile
  for (int nb = 0; nb < D / 64; ++nb) {
    if (!dk::owns_dq_block(nb, step, wg)) continue;
    float dq[32];
    dk::dq_block<T>(dq, ark::sm90::smem_addr(ds_tile), ark::sm90::smem_addr(k), nb);
    dk::stage_dq_block(ark::sm90::smem_addr(dq_tile), dq, 1.f, t, wg, nb);
  }
  ark::sm90::fence_async_shared();
  __syncthreads();  // the kernel's dq_full barrier
  if (t == 0) {
    for (int box = 0; box < D / 32; ++box)
      ark::sm90::tma_reduce_add_4d(&tdq, dq_tile + box * L::kDqBoxBytes, box * 32, 0, 0, 0);
    ark::sm90::bulk_commit();
    ark::sm90::bulk_wait<0>();
  }
#endif
}

std::vector<uint16_t> random_bf16(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = bf16_from(dist(rng));
  return v;
}

template <typename E> E* to_device(const std::vector<E>& h) {
  E* d = nullptr;
  cudaMalloc(&d, h.size() * sizeof(E));
  cudaMemcpy(d, h.data(), h.size() * sizeof(E), cudaMemcpyHostToDevice);
  return d;
}

// A (128 x D) bf16 matrix as a (1, 1, 128, D) tensor map with 128-row boxes.
bool tensor_map(CUtensorMap* map, const uint16_t* dev, int D) {
  const int64_t strides[3] = {kRows * D, kRows * D, D};
  return ark::sm90::make_tensor_map(map, "m", dev, ARK_BFLOAT16, D, kRows, 1, 1, strides, kRows) == ARK_SUCCESS;
}

// One block of 256 threads with `smem` bytes of dynamic shared memory; the result (the kernel's last
// argument) copied back into `got`.
template <typename... Args>
void run_one(const char* what, void (*kernel)(Args..., float*), int smem, std::vector<float>& got, Args... args) {
  float* d_out = to_device(got);
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  kernel<<<1, 256, smem>>>(args..., d_out);
  const cudaError_t err = cudaDeviceSynchronize();
  EXPECT(err == cudaSuccess, "%s: %s", what, cudaGetErrorString(err));
  cudaMemcpy(got.data(), d_out, got.size() * 4, cudaMemcpyDeviceToHost);
  cudaFree(d_out);
}

void compare(const char* what, int D, const std::vector<float>& got, const std::vector<double>& want) {
  const double rel = rel_error(got, want);
  EXPECT(rel < 1e-5, "%s, D=%d: relative error %.3e", what, D, rel);
  std::printf("%s, D = %d: relative error %.2e\n", what, D, rel);
}

template <int D> void check_qk(std::mt19937& rng) {
  const auto q = random_bf16(kRows * D, rng), k = random_bf16(kRows * D, rng);
  uint16_t *dq = to_device(q), *dk = to_device(k);
  std::vector<float> got(kRows * BN, NAN);
  CUtensorMap tq, tk;
  EXPECT(tensor_map(&tq, dq, D) && tensor_map(&tk, dk, D), "qk D=%d: tensor maps: %s", D, ark_last_error_message());
  run_one<CUtensorMap, CUtensorMap>("qk", qk_kernel<D>, 2 * kRows * D * 2 + 1024, got, tq, tk);
  std::vector<double> want(kRows * BN);
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < BN; ++j) {
      double acc = 0;
      for (int d = 0; d < D; ++d) acc += double(bf16_to(q[i * D + d])) * bf16_to(k[j * D + d]);
      want[i * BN + j] = acc;
    }
  compare("S = Q K^T (TMA + SS wgmma, K-major descriptors)", D, got, want);
  cudaFree(dq);
  cudaFree(dk);
}

template <int D> void check_pv(std::mt19937& rng) {
  std::vector<float> p(kRows * BN);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (auto& x : p) x = bf16_round(u(rng));  // exactly representable: the fragments round nothing
  const auto v = random_bf16(BN * D, rng);
  float* dp = to_device(p);
  uint16_t* dv = to_device(v);
  std::vector<float> got(kRows * D, NAN);
  CUtensorMap tv;
  EXPECT(tensor_map(&tv, dv, D), "pv D=%d: tensor map: %s", D, ark_last_error_message());
  run_one<const float*, CUtensorMap>("pv", pv_kernel<D>, kRows * D * 2 + 1024, got, dp, tv);
  std::vector<double> want(kRows * D);
  for (int i = 0; i < kRows; ++i)
    for (int d = 0; d < D; ++d) {
      double acc = 0;
      for (int j = 0; j < BN; ++j) acc += double(p[i * BN + j]) * bf16_to(v[j * D + d]);
      want[i * D + d] = acc;
    }
  compare("O = P V (register fragments + RS wgmma, transposed V descriptor)", D, got, want);
  cudaFree(dp);
  cudaFree(dv);
}

template <int D> void check_dq(std::mt19937& rng, int step) {
  constexpr int Q = ark::bsa_dkdv::QS;
  std::vector<float> ds_t(kRows * Q);
  std::normal_distribution<float> nd;
  for (auto& x : ds_t) x = bf16_round(nd(rng));  // exactly representable: the packing rounds nothing
  const auto k = random_bf16(kRows * D, rng);
  float* dds = to_device(ds_t);
  uint16_t* dk = to_device(k);
  std::vector<float> got(Q * D, 0.f);  // the kernel adds into it
  float* d_out = to_device(got);
  CUtensorMap tk, tdq;
  const int64_t dq_strides[3] = {Q * D, Q * D, D};
  EXPECT(tensor_map(&tk, dk, D), "dq D=%d: tensor map: %s", D, ark_last_error_message());
  EXPECT(ark::sm90::make_tensor_map(&tdq, "dq", d_out, ARK_FLOAT32, D, Q, 1, 1, dq_strides, Q) == ARK_SUCCESS,
         "dq D=%d: fp32 tensor map: %s", D, ark_last_error_message());
  const int smem = kRows * D * 2 + kRows * Q * 2 + Q * D * 4 + 1024;
  cudaFuncSetAttribute(dq_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  dq_kernel<D><<<1, 256, smem>>>(dds, tk, tdq, step);
  const cudaError_t err = cudaDeviceSynchronize();
  EXPECT(err == cudaSuccess, "dq D=%d: %s", D, cudaGetErrorString(err));
  cudaMemcpy(got.data(), d_out, got.size() * 4, cudaMemcpyDeviceToHost);
  std::vector<double> want(Q * D);
  for (int q = 0; q < Q; ++q)
    for (int d = 0; d < D; ++d) {
      double acc = 0;
      for (int j = 0; j < kRows; ++j) acc += double(ds_t[j * Q + q]) * bf16_to(k[j * D + d]);
      want[q * D + d] = acc;
    }
  std::printf("step parity %d: ", step);
  compare("dQ = dS K (swizzled dS^T store, SS wgmma with both operands MN-major, staged fp32 tile, TMA reduce-add)", D,
          got, want);
  cudaFree(dds);
  cudaFree(dk);
  cudaFree(d_out);
}

}  // namespace

constexpr int kSkipped = 77;  // SKIP_RETURN_CODE of the ctest entry: not run is not passed

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  int dev = 0, devices = 0, major = 0, minor = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: sm_90 primitives not run (skipped)\n");
    return kSkipped;
  }
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (major != 9 || minor != 0) {
    std::printf("sm_%d%d: the sm_90a primitives need an sm_90 GPU; not run (skipped)\n", major, minor);
    return kSkipped;
  }
  std::mt19937 rng(7);
  check_qk<64>(rng);
  check_qk<128>(rng);
  check_pv<64>(rng);
  check_pv<128>(rng);
  for (int step = 0; step < 2; ++step) {
    check_dq<64>(rng, step);
    check_dq<128>(rng, step);
  }
  return finish("sm_90 primitives");
}
