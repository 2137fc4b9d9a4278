// C API of ssd_chunk_scan: validates every argument, then runs the CPU kernel.
#include <cmath>

#include "arkernels/ssd_chunk_scan.h"
#include "common/status.hpp"
#include "ops/ssd_chunk_scan/ssd_chunk_scan.hpp"

namespace {

ark_status check_args(const ark_ssd_chunk_scan_args* a, ark_device device) {
  ARK_REQUIRE(a != nullptr, "args: expected a non-NULL pointer");
  ARK_REQUIRE(a->batch >= 0 && a->seqlen >= 0 && a->nheads >= 0 && a->headdim >= 0 && a->ngroups >= 0 &&
                  a->dstate >= 0,
              "args: expected sizes >= 0, got batch=%lld seqlen=%lld nheads=%lld headdim=%lld ngroups=%lld dstate=%lld",
              (long long)a->batch, (long long)a->seqlen, (long long)a->nheads, (long long)a->headdim,
              (long long)a->ngroups, (long long)a->dstate);
  ARK_REQUIRE(a->ngroups >= 1 && a->nheads % a->ngroups == 0,
              "ngroups: expected a divisor of nheads = %lld (>= 1), got %lld", (long long)a->nheads,
              (long long)a->ngroups);
  ARK_TRY(ark::check_float_dtype("dtype", a->dtype));
  ARK_REQUIRE(a->dt_softplus == 0 || a->dt_softplus == 1, "dt_softplus: expected 0 or 1, got %d", a->dt_softplus);
  ARK_REQUIRE(!std::isnan(a->dt_min) && !std::isnan(a->dt_max) && a->dt_min <= a->dt_max,
              "dt_min, dt_max: expected dt_min <= dt_max, got %g and %g", (double)a->dt_min, (double)a->dt_max);
  // CUDA is a valid device, but this op has none in libarkernels: answer that before
  // check_device, whose NOT_COMPILED message (CPU-only builds) would be the wrong reason.
  if (device == ARK_DEVICE_CUDA)
    return ark::fail(ARK_ERROR_NOT_COMPILED,
                     "device: ssd_chunk_scan has no CUDA kernel in libarkernels (its GPU path is the Triton kernel "
                     "of the Python package)");
  ARK_TRY(ark::check_device(device));
  const bool tokens = a->batch > 0 && a->seqlen > 0 && a->nheads > 0;
  ARK_REQUIRE(!tokens || (a->x && a->dt && a->A && a->B && a->C),
              "x, dt, A, B, C: expected non-NULL pointers, got x=%p dt=%p A=%p B=%p C=%p", a->x, (const void*)a->dt,
              (const void*)a->A, a->B, a->C);
  if (a->cu_seqlens) {
    ARK_REQUIRE(a->batch == 1, "cu_seqlens: expected batch == 1, got batch %lld", (long long)a->batch);
    ARK_REQUIRE(a->num_seqs >= 0, "num_seqs: expected >= 0, got %lld", (long long)a->num_seqs);
    ARK_REQUIRE(a->cu_seqlens[0] == 0 && a->cu_seqlens[a->num_seqs] == a->seqlen,
                "cu_seqlens: expected values from 0 to seqlen = %lld, got %lld ... %lld", (long long)a->seqlen,
                (long long)a->cu_seqlens[0], (long long)a->cu_seqlens[a->num_seqs]);
    for (int64_t k = 0; k < a->num_seqs; ++k)
      ARK_REQUIRE(a->cu_seqlens[k] <= a->cu_seqlens[k + 1],
                  "cu_seqlens: expected non-decreasing values, got %lld then %lld at index %lld",
                  (long long)a->cu_seqlens[k], (long long)a->cu_seqlens[k + 1], (long long)k);
  }
  return ARK_SUCCESS;
}

}  // namespace

extern "C" ark_status ark_ssd_chunk_scan_fwd(const ark_ssd_chunk_scan_args* args, void* out, float* final_states,
                                             ark_device device, void* stream) {
  (void)stream;
  ark::clear_error();
  ARK_TRY(check_args(args, device));
  const bool tokens = args->batch > 0 && args->seqlen > 0 && args->nheads > 0 && args->headdim > 0;
  ARK_REQUIRE(!tokens || out, "out: expected a non-NULL pointer");
  ark::ssd_chunk_scan_fwd_cpu(*args, out, final_states);
  return ARK_SUCCESS;
}

extern "C" ark_status ark_ssd_chunk_scan_bwd(const ark_ssd_chunk_scan_args* args, const void* grad_out,
                                             const float* grad_final, void* dx, float* ddt, float* dA, void* dB,
                                             void* dC, float* dD, void* dz, float* ddt_bias, float* dinit,
                                             ark_device device, void* stream) {
  (void)stream;
  ark::clear_error();
  ARK_TRY(check_args(args, device));
  const bool tokens = args->batch > 0 && args->seqlen > 0 && args->nheads > 0;
  ARK_REQUIRE(!tokens || (grad_out && dx && ddt && dB && dC),
              "grad_out, dx, ddt, dB, dC: expected non-NULL pointers, got %p %p %p %p %p", grad_out, dx,
              (void*)ddt, dB, dC);
  ARK_REQUIRE(args->nheads == 0 || dA, "dA: expected a non-NULL pointer");
  ARK_REQUIRE(!args->z || !tokens || dz, "dz: expected a non-NULL pointer when z is given");
  const ark::SsdChunkScanGrads g{grad_out, grad_final, dx, ddt, dA, dB, dC, args->D ? dD : nullptr,
                                 args->z ? dz : nullptr, ddt_bias, dinit};
  ark::ssd_chunk_scan_bwd_cpu(*args, g);
  return ARK_SUCCESS;
}
