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
  // Exact knn (pydiffgen.ops.knn), certified candidate pass: queries [M, D], keys [N, D],
  // centre [D] -> (candidates [M, C] int64, lower bounds [M, C] f64, tau [M] f64, overflow [M]).
  m.def("knn_candidates(Tensor queries, Tensor keys, Tensor centre, int k, int metric,"
        " int precision, int tile_elems, int capacity, int offset)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  // ... and its float64 re-rank: cand [M, C] rows of keys -> (values f64 [M, k], indices).
  m.def("knn_rerank(Tensor queries, Tensor keys, Tensor cand, int k, int metric)"
        " -> (Tensor, Tensor)");
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
