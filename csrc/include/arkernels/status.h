/* arkernels C API: status codes, dtypes and devices shared by every op.
 * Torch-free: this header is what other frameworks (JAX FFI, CuPy, plain C/C++) include. */
#ifndef ARKERNELS_STATUS_H
#define ARKERNELS_STATUS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define ARK_API __declspec(dllexport)
#else
#define ARK_API __attribute__((visibility("default")))
#endif

typedef enum ark_status {
  ARK_SUCCESS = 0,
  ARK_ERROR_INVALID_ARGUMENT = 1, /* a size, stride, pointer or enum value is not accepted */
  ARK_ERROR_NOT_COMPILED = 2,     /* the requested device path is not in this build (e.g. CUDA off) */
  ARK_ERROR_CUDA = 3,             /* a CUDA runtime call or kernel launch failed */
  ARK_ERROR_INTERNAL = 4
} ark_status;

typedef enum ark_dtype {
  ARK_FLOAT32 = 0,
  ARK_FLOAT16 = 1,
  ARK_BFLOAT16 = 2
} ark_dtype;

typedef enum ark_device {
  ARK_DEVICE_CPU = 0,
  ARK_DEVICE_CUDA = 1
} ark_device;

/* A static English name for a status ("ARK_ERROR_INVALID_ARGUMENT", ...). */
ARK_API const char* ark_status_name(ark_status status);

/* Details of the last non-success status returned on this thread (which argument, expected, actual).
 * Valid until the next arkernels call on the same thread; never NULL. */
ARK_API const char* ark_last_error_message(void);

/* 1 when this build of libarkernels contains CUDA kernels, 0 otherwise. */
ARK_API int ark_has_cuda(void);

#ifdef __cplusplus
}
#endif

#endif /* ARKERNELS_STATUS_H */
