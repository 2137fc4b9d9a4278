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

ark_status check_float_dtype(const char* name, ark_dtype d) {
  ARK_REQUIRE(d == ARK_FLOAT32 || d == ARK_FLOAT16 || d == ARK_BFLOAT16,
              "%s: expected ARK_FLOAT32, ARK_FLOAT16 or ARK_BFLOAT16, got %d", name, (int)d);
  return ARK_SUCCESS;
}

// ARKERNELS_WITH_CUDA is a compile definition of the whole arkernels target (CMakeLists.txt), so it
// is seen here exactly as in the ops' C API files.
ark_status check_device(ark_device device) {
  ARK_REQUIRE(device == ARK_DEVICE_CPU || device == ARK_DEVICE_CUDA,
              "device: expected ARK_DEVICE_CPU or ARK_DEVICE_CUDA, got %d", (int)device);
#ifndef ARKERNELS_WITH_CUDA
  if (device == ARK_DEVICE_CUDA)
    return fail(ARK_ERROR_NOT_COMPILED, "device: ARK_DEVICE_CUDA requested, but this libarkernels was built without CUDA");
#endif
  return ARK_SUCCESS;
}

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
