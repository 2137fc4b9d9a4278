// Internal helpers for returning an ark_status with a message (torch-free).
#pragma once

#include <cstdarg>
#include "arkernels/status.h"

namespace ark {

// Records a printf-style message for ark_last_error_message() and returns `status`.
ark_status fail(ark_status status, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Clears the thread's message; every C API entry point calls it first.
void clear_error();

inline const char* dtype_name(ark_dtype d) {
  switch (d) {
    case ARK_FLOAT32: return "float32";
    case ARK_FLOAT16: return "float16";
    case ARK_BFLOAT16: return "bfloat16";
  }
  return "unknown";
}

// Checks that `d` is one of the floating dtypes every op takes (ARK_FLOAT32, ARK_FLOAT16,
// ARK_BFLOAT16); `name` is the argument's name in the message.
ark_status check_float_dtype(const char* name, ark_dtype d);

// Checks that `device` is ARK_DEVICE_CPU or ARK_DEVICE_CUDA (ARK_ERROR_INVALID_ARGUMENT otherwise),
// and that CUDA was compiled in when it is requested (ARK_ERROR_NOT_COMPILED otherwise).
ark_status check_device(ark_device device);

}  // namespace ark

// Validates an argument of a C API function: returns ARK_ERROR_INVALID_ARGUMENT with a message
// naming the argument, what was expected and what was given.
#define ARK_REQUIRE(cond, ...)                                                   \
  do {                                                                           \
    if (!(cond)) return ::ark::fail(ARK_ERROR_INVALID_ARGUMENT, __VA_ARGS__);    \
  } while (0)

// Returns early from a C API function when a check (which returns an ark_status) fails.
#define ARK_TRY(expr)                          \
  do {                                         \
    const ark_status s_ = (expr);              \
    if (s_ != ARK_SUCCESS) return s_;          \
  } while (0)
