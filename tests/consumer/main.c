/* Links only the installed libarkernels (find_package(arkernels)); runs a small CPU scan and checks it. */
#include <arkernels/arkernels.h>

#include <math.h>
#include <stdio.h>

int main(void) {
  const float a[4] = {0.5f, 0.5f, 0.5f, 0.5f}, b[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  const float expected[4] = {1.0f, 2.5f, 4.25f, 6.125f};
  float h[4], last;
  ark_status s = ark_linear_scan_fwd(a, b, NULL, h, &last, 1, 4, 4, 4, 4, 0, ARK_FLOAT32, ARK_DEVICE_CPU, NULL);
  if (s != ARK_SUCCESS) {
    printf("FAIL: %s: %s\n", ark_status_name(s), ark_last_error_message());
    return 1;
  }
  for (int t = 0; t < 4; ++t)
    if (fabsf(h[t] - expected[t]) > 1e-6f) {
      printf("FAIL: h[%d] = %g, expected %g\n", t, h[t], expected[t]);
      return 1;
    }
  s = ark_linear_scan_fwd(a, b, NULL, h, &last, -1, 4, 4, 4, 4, 0, ARK_FLOAT32, ARK_DEVICE_CPU, NULL);
  if (s != ARK_ERROR_INVALID_ARGUMENT) {
    printf("FAIL: negative rows accepted\n");
    return 1;
  }
  printf("consumer linked arkernels %s CUDA: ok (final state %g)\n", ark_has_cuda() ? "with" : "without", last);
  return 0;
}
