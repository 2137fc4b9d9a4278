// C API of selective_scan: validates every argument, then runs the CPU or CUDA kernels.
#include "arkernels/selective_scan.h"

#include "common/status.hpp"
#include "ops/selective_scan/selective_scan.cuh"

namespace {

enum class Check { sizes, forward, backward };

ark_status check_args(const ark_selective_scan_args* a, ark_device device, Check what) {
  ARK_REQUIRE(a != nullptr, "args: expected a non-NULL pointer");
  ARK_REQUIRE(a->batch >= 0 && a->dim >= 0 && a->seqlen >= 0,
              "batch, dim, seqlen: expected >= 0, got %lld, %lld, %lld", (long long)a->batch, (long long)a->dim,
              (long long)a->seqlen);
  ARK_REQUIRE(a->dstate >= 1 && a->dstate <= ARK_SELECTIVE_SCAN_MAX_DSTATE,
              "dstate: expected 1..%d, got %lld", ARK_SELECTIVE_SCAN_MAX_DSTATE, (long long)a->dstate);
  ARK_REQUIRE(a->ngroups >= 1 && (a->dim == 0 || a->dim % a->ngroups == 0),
              "ngroups: expected >= 1 and dividing dim = %lld, got %lld", (long long)a->dim, (long long)a->ngroups);
  ARK_TRY(ark::check_float_dtype("dtype", a->dtype));
  ARK_TRY(ark::check_device(device));
  if (a->cu_seqlens) {
    ARK_REQUIRE(a->batch == 1, "cu_seqlens: packed sequences need batch == 1, got batch %lld", (long long)a->batch);
    ARK_REQUIRE(a->num_seqs >= 1, "num_seqs: expected >= 1 with cu_seqlens, got %lld", (long long)a->num_seqs);
  } else {
    ARK_REQUIRE(a->num_seqs == a->batch, "num_seqs: expected batch = %lld without cu_seqlens, got %lld",
                (long long)a->batch, (long long)a->num_seqs);
  }
  const bool any = a->batch > 0 && a->dim > 0 && a->seqlen > 0;
  if (what == Check::sizes) return ARK_SUCCESS;
  ARK_REQUIRE(!any || (a->u && a->delta && a->A && a->B && a->C),
              "u, delta, A, B, C: expected non-NULL pointers for a non-empty problem");
  if (what == Check::forward) {
    ARK_REQUIRE(!any || a->out, "out: expected a non-NULL pointer");
  } else {
    ARK_REQUIRE(!any || (a->dout && a->du && a->ddelta && a->dA && a->dB && a->dC),
                "dout, du, ddelta, dA, dB, dC: expected non-NULL pointers for a non-empty problem");
    ARK_REQUIRE(!a->D || !any || a->dD, "dD: expected a non-NULL pointer when D is given");
    ARK_REQUIRE(!a->delta_bias || !any || a->ddelta_bias, "ddelta_bias: expected a non-NULL pointer when delta_bias is given");
    ARK_REQUIRE(!a->z || !any || (a->dz && a->y_pre), "dz, y_pre: expected non-NULL pointers when z is given");
    ARK_REQUIRE(device != ARK_DEVICE_CUDA || !any || a->checkpoints,
                "checkpoints: the CUDA backward needs the states the forward stored (checkpoints), got NULL");
  }
  return ARK_SUCCESS;
}

ark::ScanWorkspace workspace_for(const ark_selective_scan_args& a, ark_device device) {
  ark::ScanBwdLayout l{ark::kCpuRowsPerBlock, 1};
#ifdef ARKERNELS_WITH_CUDA
  if (device == ARK_DEVICE_CUDA) l = ark::selective_scan_cuda_bwd_layout(a);
#endif
  (void)device;
  return ark::scan_workspace(a, l.rows_per_block, l.chunks);
}

size_t fwd_workspace_bytes(const ark_selective_scan_args& a, ark_device device) {
#ifdef ARKERNELS_WITH_CUDA
  if (device == ARK_DEVICE_CUDA && a.batch > 0 && a.dim > 0 && a.seqlen > 0)
    return ark::selective_scan_cuda_fwd_workspace_floats(a) * sizeof(float);
#endif
  (void)a;
  (void)device;
  return 0;
}

size_t bwd_workspace_bytes(const ark_selective_scan_args& a, ark_device device) {
  return workspace_for(a, device).floats * sizeof(float);
}

// The two workspace-size queries: the sizes validated, then bytes_for(args, device).
ark_status query_workspace(const ark_selective_scan_args* args, ark_device device, size_t* bytes,
                           size_t (*bytes_for)(const ark_selective_scan_args&, ark_device)) {
  ark::clear_error();
  ARK_TRY(check_args(args, device, Check::sizes));
  ARK_REQUIRE(bytes != nullptr, "bytes: expected a non-NULL pointer");
  *bytes = bytes_for(*args, device);
  return ARK_SUCCESS;
}

}  // namespace

extern "C" ark_status ark_selective_scan_fwd_workspace_size(const ark_selective_scan_args* args, ark_device device,
                                                            size_t* bytes) {
  return query_workspace(args, device, bytes, fwd_workspace_bytes);
}

extern "C" ark_status ark_selective_scan_fwd_with_workspace(const ark_selective_scan_args* args, void* workspace,
                                                            size_t workspace_bytes, ark_device device, void* stream) {
  ark::clear_error();
  ARK_TRY(check_args(args, device, Check::forward));
  if (args->batch == 0 || args->dim == 0) return ARK_SUCCESS;
  if (workspace) {
    const size_t need = fwd_workspace_bytes(*args, device);
    ARK_REQUIRE(workspace_bytes >= need,
                "workspace: expected at least %zu bytes (ark_selective_scan_fwd_workspace_size), got %zu", need,
                workspace_bytes);
  }
  if (device == ARK_DEVICE_CPU) {
    ark::selective_scan_fwd_cpu(*args);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  return ark::selective_scan_fwd_cuda(*args, static_cast<float*>(workspace), stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}

extern "C" ark_status ark_selective_scan_fwd(const ark_selective_scan_args* args, ark_device device, void* stream) {
  return ark_selective_scan_fwd_with_workspace(args, nullptr, 0, device, stream);
}

extern "C" ark_status ark_selective_scan_bwd_workspace_size(const ark_selective_scan_args* args, ark_device device,
                                                            size_t* bytes) {
  return query_workspace(args, device, bytes, bwd_workspace_bytes);
}

extern "C" ark_status ark_selective_scan_bwd(const ark_selective_scan_args* args, void* workspace,
                                             size_t workspace_bytes, ark_device device, void* stream) {
  ark::clear_error();
  ARK_TRY(check_args(args, device, Check::backward));
  if (args->batch == 0 || args->dim == 0) return ARK_SUCCESS;
  const size_t need = bwd_workspace_bytes(*args, device);
  ARK_REQUIRE(workspace_bytes >= need && (need == 0 || workspace),
              "workspace: expected at least %zu bytes (ark_selective_scan_bwd_workspace_size), got %zu at %p", need,
              workspace_bytes, workspace);
  float* ws = static_cast<float*>(workspace);
  if (device == ARK_DEVICE_CPU) {
    ark::selective_scan_bwd_cpu(*args, ws);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  return ark::selective_scan_bwd_cuda(*args, ws, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}
