// Python module arkernels._C. Importing it loads this library, whose static initialisers register
// the arkernels::* torch ops (TORCH_LIBRARY_* blocks in the other files of this folder).
#include <Python.h>
#include <torch/library.h>

#include "torch/torch_utils.hpp"

namespace ark_torch {
bool& poison_outputs() {
  static bool enabled = false;
  return enabled;
}
}  // namespace ark_torch

TORCH_LIBRARY(arkernels, m) {
  m.def("_set_poison_outputs(bool enabled) -> ()", [](bool enabled) { ark_torch::poison_outputs() = enabled; });
}

static PyModuleDef arkernels_c_module = {PyModuleDef_HEAD_INIT, "_C", "arkernels torch op registrations", -1,
                                         nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&arkernels_c_module); }
