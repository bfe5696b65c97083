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
  // Exact knn (pydiffgen.ops.knn), keys prepared once per pass: keys [N, D], centre [D]
  // -> (x̃ [N, D] in the pass's GEMM dtype, ‖r̃‖ [N] f64, dx [N] f64, a [N] f64, s [N] f32 or [],
  //     level [N, 3] f64).
  m.def("knn_prepare(Tensor keys, Tensor centre, int metric, int precision)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // ... its certified candidate pass: queries [M, D] against the prepared keys
  // -> (candidates [M, C] int64, lower bounds [M, C] f64, tau [M] f64, overflow [M]).
  m.def("knn_candidates(Tensor queries, Tensor key_gemm, Tensor key_norm, Tensor key_delta,"
        " Tensor key_add, Tensor key_scale, Tensor key_level, Tensor centre, int k, int metric,"
        " int precision,"
        " int tile_elems, int capacity, int offset) -> (Tensor, Tensor, Tensor, Tensor)");
  // ... and its float64 re-rank: cand [M, C] rows of keys -> (values f64 [M, k], indices);
  // with the candidates' lower bounds [M, C] f64 (and the l2 centre) it stops early.
  m.def("knn_rerank(Tensor queries, Tensor keys, Tensor cand, int k, int metric,"
        " Tensor? lower=None, Tensor? centre=None) -> (Tensor, Tensor)");
  // Batched symmetric eigendecomposition (pydiffgen.ops.eigh), CUDA only (cuSOLVER):
  // A [B, n, n] -> (eigenvalues [B, n] ascending, eigenvectors [B, n, n] as columns).
  m.def("eigh(Tensor A) -> (Tensor, Tensor)");
  // Fused GroupNorm → FiLM → SiLU (pydiffgen.ops.groupnorm_film_silu): x [B, C, *],
  // weight/bias [C], scale/shift [B, C] -> (y, mean [B, G], rstd [B, G]); and its backward
  // -> (dx, dweight, dbias, dscale, dshift).
  m.def("groupnorm_film_silu_fwd(Tensor x, int num_groups, Tensor weight, Tensor bias,"
        " Tensor scale, Tensor shift, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("groupnorm_film_silu_bwd(Tensor grad, Tensor x, Tensor mean, Tensor rstd,"
        " int num_groups, Tensor weight, Tensor bias, Tensor scale, Tensor shift)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Fused bias-free batch norm (training statistics) + ReLU (pydiffgen.ops.bf_batchnorm_relu):
  // x [B, C, *], gain [C] -> (y, mean [C], std [C]); backward -> (dx, dgain).
  m.def("bf_batchnorm_relu_fwd(Tensor x, Tensor gain, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("bf_batchnorm_relu_bwd(Tensor grad, Tensor grad_mean, Tensor grad_std, Tensor x,"
        " Tensor mean, Tensor std, Tensor gain) -> (Tensor, Tensor)");
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
