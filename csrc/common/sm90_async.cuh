// Hopper (sm_90a) building blocks for kernels that feed warpgroup MMAs (wgmma) from shared memory filled
// by the tensor memory accelerator (TMA): shared-memory matrix descriptors, wgmma issue / fence / wait,
// mbarriers and TMA tile loads. Every body is inline PTX that only exists for sm_90a; on other targets the
// functions compile to nothing and the kernels that use them must not be launched (callers check the
// device's compute capability first).
//
// Conventions the helpers assume (PTX ISA, "asynchronous warpgroup-level matrix shared memory layout"):
//  * every 16-bit operand tile lives in shared memory as panels of rows x 64 elements (128 bytes per
//    row) written by TMA with CU_TENSOR_MAP_SWIZZLE_128B, each panel starting on a 1024-byte boundary,
//    so the swizzle pattern's base offset is 0;
//  * K-major operands (the reduction dimension contiguous): 8-row groups 1024 bytes apart (SBO), the
//    leading byte offset unused; a 16-element k-step inside a panel advances the start address by 32 B;
//  * MN-major operands (the output dimension contiguous, "transposed"): 8-row groups along K 1024 bytes
//    apart (SBO), consecutive 64-element MN panels LBO bytes apart.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ARK_SM90A_DEVICE 1
#else
#define ARK_SM90A_DEVICE 0
#endif

namespace ark {
namespace sm90 {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte offsets (each stored
// >> 4 in 14 bits), swizzle mode 1 in bits 62-63; kept split for stepping through a tile: `lo` (start address >> 4,
// LBO) and the high word (SBO, swizzle), constant for a given layout. at(off) is the descriptor of the start address
// + off bytes (a multiple of 16; the address stays below 256 KB, so the 14-bit address field cannot carry into the
// LBO). Built once per tile, each wgmma then costs one integer add where a descriptor built whole costs a mask, a
// shift and an or (and, from an opaque address, a register move into the uniform datapath).
struct Sw128Desc {
  uint32_t lo, hi;
  __device__ __forceinline__ Sw128Desc(uint32_t smem_address, uint32_t lbo_bytes, uint32_t sbo_bytes)
      : lo(((smem_address & 0x3FFFF) >> 4) | (((lbo_bytes & 0x3FFFF) >> 4) << 16)),
        hi(((sbo_bytes & 0x3FFFF) >> 4) | (1u << 30)) {}
  __device__ __forceinline__ uint64_t at(uint32_t off) const { return (uint64_t(hi) << 32) | (lo + (off >> 4)); }
};

// One descriptor built whole (the forward's per-wgmma use).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t smem_address, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return Sw128Desc(smem_address, lbo_bytes, sbo_bytes).at(0);
}

// Dynamic shared memory aligned up to 1024 bytes (the 128-byte swizzle's atoms) by an offset from the __shared__
// array itself, so that the compiler still knows the pointer is shared: LDS / STS for plain accesses through it. A
// round trip through an integer (uintptr_t) loses the address space: generic LD / ST with 64-bit addresses.
__device__ __forceinline__ uint8_t* align_smem_1024(uint8_t* raw) {
  return raw + ((1024u - (smem_addr(raw) & 1023u)) & 1023u);
}

// ---- wgmma issue and ordering ----

// Orders this thread's register writes before the next wgmma that reads them (accumulators, A fragments).
__device__ __forceinline__ void wgmma_fence() {
#if ARK_SM90A_DEVICE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if ARK_SM90A_DEVICE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
#if ARK_SM90A_DEVICE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// A register the async MMA wrote: the empty asm makes later reads depend on a point after the wait, so
// the compiler cannot hoist them above it (it does not know the MMA is asynchronous).
template <int R> __device__ __forceinline__ void fence_operands(float (&r)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// The accumulator operand lists of one m64nNk16 wgmma with fp32 accumulators: N / 2 registers a thread.
#define ARK_WGMMA_D32_LIST                                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "  \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define ARK_WGMMA_D64_LIST                                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "  \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "    \
  "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "    \
  "%62, %63}"
#define ARK_WGMMA_D32_OUTS(d)                                                                               \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),          \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),            \
      "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),            \
      "+f"(d[30]), "+f"(d[31])
#define ARK_WGMMA_D64_OUTS(d)                                                                               \
  ARK_WGMMA_D32_OUTS(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),     \
      "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]),            \
      "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]),            \
      "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]),            \
      "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// D (64 x N, fp32) (+)= A (64 x 16) * B (16 x N), N = 2 x (registers of d). wgmma_ss: A and B by descriptor,
// both K-major. wgmma_rs_tb: A from registers (4 x 2 halves a thread, the m64nNk16 A fragment), B by
// descriptor, MN-major (transposed). wgmma_ss_tt: A and B by descriptor, both MN-major (a matrix stored with
// its K dimension as the rows, as B of wgmma_rs_tb). `accumulate` 0 overwrites D. The first argument selects
// the element type of A and B (bf16 or fp16; only its type matters).
#define ARK_DEFINE_WGMMA(N, NREG, TY, CTYPE)                                                                \
  __device__ __forceinline__ void wgmma_ss(CTYPE, float(&d)[NREG], uint64_t desc_a, uint64_t desc_b,       \
                                           int accumulate) {                                               \
    ARK_WGMMA_BODY_SS(N, NREG, TY)                                                                         \
  }                                                                                                        \
  __device__ __forceinline__ void wgmma_rs_tb(CTYPE, float(&d)[NREG], const uint32_t(&a)[4], uint64_t desc_b, \
                                              int accumulate) {                                            \
    ARK_WGMMA_BODY_RS(N, NREG, TY)                                                                         \
  }                                                                                                        \
  __device__ __forceinline__ void wgmma_ss_tt(CTYPE, float(&d)[NREG], uint64_t desc_a, uint64_t desc_b,    \
                                              int accumulate) {                                            \
    ARK_WGMMA_BODY_SS_TT(N, NREG, TY)                                                                      \
  }

#if ARK_SM90A_DEVICE
#define ARK_WGMMA_NUM_(x) #x
#define ARK_WGMMA_NUM(x) ARK_WGMMA_NUM_(x)
#define ARK_WGMMA_BODY_SS(N, NREG, TY)                                                                      \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" ARK_WGMMA_NUM(ARK_WGMMA_PLUS2_##NREG) ", 0;\n"          \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TY "." #TY " " ARK_WGMMA_D##NREG##_LIST     \
               ", %" #NREG ", %" ARK_WGMMA_NUM(ARK_WGMMA_PLUS1_##NREG) ", p, 1, 1, 0, 0;\n}\n"               \
               : ARK_WGMMA_D##NREG##_OUTS(d)                                                               \
               : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#define ARK_WGMMA_BODY_SS_TT(N, NREG, TY)                                                                   \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" ARK_WGMMA_NUM(ARK_WGMMA_PLUS2_##NREG) ", 0;\n"          \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TY "." #TY " " ARK_WGMMA_D##NREG##_LIST     \
               ", %" #NREG ", %" ARK_WGMMA_NUM(ARK_WGMMA_PLUS1_##NREG) ", p, 1, 1, 1, 1;\n}\n"               \
               : ARK_WGMMA_D##NREG##_OUTS(d)                                                               \
               : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#define ARK_WGMMA_BODY_RS(N, NREG, TY)                                                                      \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" ARK_WGMMA_NUM(ARK_WGMMA_PLUS5_##NREG) ", 0;\n"          \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TY "." #TY " " ARK_WGMMA_D##NREG##_LIST     \
               ", {%" #NREG ", %" ARK_WGMMA_NUM(ARK_WGMMA_PLUS1_##NREG) ", %" ARK_WGMMA_NUM(                   \
                   ARK_WGMMA_PLUS2_##NREG) ", %" ARK_WGMMA_NUM(ARK_WGMMA_PLUS3_##NREG) "}, %" ARK_WGMMA_NUM(  \
                   ARK_WGMMA_PLUS4_##NREG) ", p, 1, 1, 1;\n}\n"                                             \
               : ARK_WGMMA_D##NREG##_OUTS(d)                                                               \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
// Operand numbers after the accumulators (the preprocessor cannot add).
#define ARK_WGMMA_PLUS1_32 33
#define ARK_WGMMA_PLUS2_32 34
#define ARK_WGMMA_PLUS3_32 35
#define ARK_WGMMA_PLUS4_32 36
#define ARK_WGMMA_PLUS5_32 37
#define ARK_WGMMA_PLUS1_64 65
#define ARK_WGMMA_PLUS2_64 66
#define ARK_WGMMA_PLUS3_64 67
#define ARK_WGMMA_PLUS4_64 68
#define ARK_WGMMA_PLUS5_64 69
#else
#define ARK_WGMMA_BODY_SS(N, NREG, TY)
#define ARK_WGMMA_BODY_SS_TT(N, NREG, TY)
#define ARK_WGMMA_BODY_RS(N, NREG, TY)
#endif

ARK_DEFINE_WGMMA(64, 32, bf16, __nv_bfloat16)
ARK_DEFINE_WGMMA(128, 64, bf16, __nv_bfloat16)
ARK_DEFINE_WGMMA(64, 32, f16, __half)
ARK_DEFINE_WGMMA(128, 64, f16, __half)

// ---- mbarriers ----

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals) {
#if ARK_SM90A_DEVICE
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
#endif
}
// Makes initialised barriers visible to the async proxy (TMA) and the other threads (with a
// __syncthreads after it).
__device__ __forceinline__ void mbar_init_fence() {
#if ARK_SM90A_DEVICE
  asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if ARK_SM90A_DEVICE
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_addr(bar)) : "memory");
#endif
}
// One arrival that also announces `bytes` of TMA traffic the phase must wait for.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if ARK_SM90A_DEVICE
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(
                   smem_addr(bar)),
               "r"(bytes)
               : "memory");
#endif
}
// Blocks until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if ARK_SM90A_DEVICE
  asm volatile(
      "{\n.reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
#endif
}

// ---- TMA ----

// A 4-D box of `tmap` (a __grid_constant__ CUtensorMap kernel parameter) at coordinates (c0 innermost)
// into shared memory at `dst`; completion is counted as bytes on `bar`.
__device__ __forceinline__ void tma_load_4d(void* dst, const void* tmap, uint64_t* bar, int c0, int c1, int c2, int c3) {
#if ARK_SM90A_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#endif
}

// The box at `src` in shared memory into global memory (through `tmap`) at coordinates (c0 innermost),
// asynchronously, in this thread's bulk async-group; rows past the tensor's bounds are not written.
__device__ __forceinline__ void tma_store_4d(const void* tmap, const void* src, int c0, int c1, int c2, int c3) {
#if ARK_SM90A_DEVICE
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(tmap)),
               "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
#endif
}

// global (through `tmap`) += the box at `src` in shared memory, element by element (the map's type, e.g. f32
// add), asynchronously, in this thread's bulk async-group (commit with bulk_commit, wait with bulk_wait*). Boxes
// past the tensor's bounds are clipped: those elements are not written.
__device__ __forceinline__ void tma_reduce_add_4d(const void* tmap, const void* src, int c0, int c1, int c2, int c3) {
#if ARK_SM90A_DEVICE
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(tmap)),
      "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit() {
#if ARK_SM90A_DEVICE
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// Until at most N of this thread's bulk groups are still reading their shared-memory sources (the source may be
// overwritten then) ...
template <int N> __device__ __forceinline__ void bulk_wait_read() {
#if ARK_SM90A_DEVICE
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}
// ... or until at most N are incomplete (their global writes done).
template <int N> __device__ __forceinline__ void bulk_wait() {
#if ARK_SM90A_DEVICE
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Named barriers (ids 1-15; 0 is __syncthreads): arrive without waiting, or wait until `threads` threads
// (arrivals and waiters together) have reached barrier `id`.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
#if ARK_SM90A_DEVICE
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
#endif
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
#if ARK_SM90A_DEVICE
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
#endif
}

// Per-warpgroup register budgets (every warp of the warpgroup executes it): a producer gives registers
// back, consumers take them, within the CTA's allocation at launch.
template <int R> __device__ __forceinline__ void regs_release() {
#if ARK_SM90A_DEVICE
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
#endif
}
template <int R> __device__ __forceinline__ void regs_claim() {
#if ARK_SM90A_DEVICE
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
#endif
}

// A 64-bit store of two floats to shared memory by its shared-window address (8-byte aligned).
__device__ __forceinline__ void st_shared_v2_f32(uint32_t addr, float a, float b) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(a), "f"(b) : "memory");
}

// A 32-bit store to shared memory by its shared-window address (a generic pointer into the aligned dynamic
// shared memory loses its address space: the compiler then emits generic stores with 64-bit addresses).
__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

// Makes this thread's plain shared-memory stores visible to the async proxy (a wgmma that reads them as an
// operand); a barrier of the writing threads must follow before the wgmma is issued.
__device__ __forceinline__ void fence_async_shared() {
#if ARK_SM90A_DEVICE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace sm90
}  // namespace ark
