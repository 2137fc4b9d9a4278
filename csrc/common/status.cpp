#include "common/status.hpp"

#include <cstdio>

namespace ark {
namespace {
thread_local char g_message[1024] = "";
}

ark_status fail(ark_status status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(g_message, sizeof(g_message), fmt, args);
  va_end(args);
  return status;
}

void clear_error() { g_message[0] = '\0'; }

}  // namespace ark

extern "C" {

const char* ark_status_name(ark_status status) {
  switch (status) {
    case ARK_SUCCESS: return "ARK_SUCCESS";
    case ARK_ERROR_INVALID_ARGUMENT: return "ARK_ERROR_INVALID_ARGUMENT";
    case ARK_ERROR_NOT_COMPILED: return "ARK_ERROR_NOT_COMPILED";
    case ARK_ERROR_CUDA: return "ARK_ERROR_CUDA";
    case ARK_ERROR_INTERNAL: return "ARK_ERROR_INTERNAL";
  }
  return "ARK_ERROR_UNKNOWN";
}

const char* ark_last_error_message(void) { return ark::g_message; }

int ark_has_cuda(void) {
#ifdef ARKERNELS_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
