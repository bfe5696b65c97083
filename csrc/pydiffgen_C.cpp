// Every op schema of pydiffgen._C in one place; kernels live in csrc/cpu and csrc/cuda.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(pydiffgen, m) {
  // Running top-k merge (pydiffgen.ops.topk_merge): values/indices [M, k], tile [M, T].
  m.def("topk_merge(Tensor values, Tensor indices, Tensor tile, int offset, bool largest)"
        " -> (Tensor, Tensor)");
  // Empirical optimal denoiser (pydiffgen.ops.empirical_denoiser): y [M, D], train [N, D],
  // sigma [M] float64 -> (out [M, D], per-row logit error estimate [M] float64).
  m.def("empirical_denoiser(Tensor y, Tensor train, Tensor sigma) -> (Tensor, Tensor)");
  // Batched symmetric eigendecomposition (pydiffgen.ops.eigh), CUDA only (cuSOLVER):
  // A [B, n, n] -> (eigenvalues [B, n] ascending, eigenvectors [B, n, n] as columns).
  m.def("eigh(Tensor A) -> (Tensor, Tensor)");
}

// A plain module so `from pydiffgen import _C` loads the library and its registrations.
// PyMODINIT_FUNC = extern "C" + default visibility, so the symbol is exported.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  return m;
}
