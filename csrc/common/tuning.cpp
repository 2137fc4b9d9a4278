// Storage of the tuning knobs (see tuning.hpp).
#include "common/tuning.hpp"

#include <cstring>

namespace ark {
namespace {
int g_knobs[int(Knob::Count)] = {};
constexpr const char* kNames[int(Knob::Count)] = {"ssu_rows", "ssu_prefetch", "conv1d_fwd_vectors", "conv1d_fwd_warps",
                                                  "conv1d_fwd_early_halo", "sscan_fwd_shape", "sscan_fwd_threads", "sscan_bwd_batched_staging",
                                                  "sscan_fwd_reduce", "sscan_fwd_paired_bc", "sscan_bwd_chunks",
                                                  "sscan_bwd_scalar_staging", "ssu_kernel", "conv1d_fwd_persistent",
                                                  "conv1d_fwd_vec_halo", "sscan_bwd_rowsum_vec", "bsa_fwd_schedule",
                                                  "bsa_fwd_stages", "bsa_fwd_ctas", "sscan_fwd_chunks", "ssu_lean"};
}  // namespace

int knob(Knob k) { return g_knobs[int(k)]; }

}  // namespace ark

extern "C" int ark_tuning_set(const char* name, int value) {
  for (int i = 0; i < int(ark::Knob::Count); ++i) {
    if (name != nullptr && ark::kNames[i] != nullptr && std::strcmp(name, ark::kNames[i]) == 0) {
      ark::g_knobs[i] = value;
      return 1;
    }
  }
  return 0;
}
