// Every aubench op schema, declared once. Kernels register their CPU and CUDA
// implementations with TORCH_LIBRARY_IMPL in csrc/<op>/; Python wrappers, fake
// (meta) kernels and autograd formulas live in aubench/ops/<op>.py.
#include <Python.h>
#include <torch/library.h>

// Makes `import aubench._C` load this library (and so run the registrations).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
#ifdef AUBENCH_WITH_CUDA
  PyModule_AddIntConstant(module, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(module, "WITH_CUDA", 0);
#endif
  return module;
}
}

TORCH_LIBRARY(aubench, m) {
  // ---- batched log-domain Sinkhorn (csrc/sinkhorn) ----------------------------------------
  // plan (B,K,K), g_history (B, max_iter if keep_history else 0, K), num_iter int64 (B,),
  // marginal_error (B,): the L1 error of each returned plan's row sums against a / sum(a).
  m.def(
      "sinkhorn(Tensor cost, Tensor a, Tensor b, float eps, int max_iter, float tol, "
      "bool keep_history) -> (Tensor plan, Tensor g_history, Tensor num_iter, "
      "Tensor marginal_error)");
  // Exact adjoint of the iterations the forward ran: (grad_cost (B,K,K), grad_a, grad_b).
  m.def(
      "sinkhorn_backward(Tensor grad_plan, Tensor plan, Tensor cost, Tensor a, Tensor b, "
      "Tensor g_history, Tensor num_iter, float eps) -> (Tensor grad_cost, Tensor grad_a, "
      "Tensor grad_b)");

  // ---- temporal-shuffle clips (csrc/temporal_shuffle) -------------------------------------
  // features (B, N, C), perm (B, N) int64/int32 -> real clips, then shuffled copies (2B, N, C)
  m.def("temporal_shuffle_features(Tensor features, Tensor perm) -> Tensor");
  // grad (2B, N, C), perm (B, N) -> grad_features (B, N, C)
  m.def("temporal_shuffle_features_backward(Tensor grad, Tensor perm) -> Tensor");

  // ---- masked-token gather / restore (csrc/token_gather) ----------------------------------
  // x (B, L, D), ids_keep (B, K) -> x[b, ids_keep[b, k]] (B, K, D)
  m.def("gather_tokens(Tensor x, Tensor ids_keep) -> Tensor");
  // grad (B, K, D), ids_keep (B, K), length L -> grad_x (B, L, D), zero where not kept
  m.def("gather_tokens_backward(Tensor grad, Tensor ids_keep, int length) -> Tensor");
  // x_vis (B, K, D), ids_restore (B, L), mask_token (D) -> (B, L, D)
  m.def("restore_tokens(Tensor x_vis, Tensor ids_restore, Tensor mask_token) -> Tensor");
  // grad (B, L, D), ids_restore (B, L), K -> (grad_x_vis (B, K, D), grad_mask_token (D))
  m.def(
      "restore_tokens_backward(Tensor grad, Tensor ids_restore, int num_keep) -> (Tensor, Tensor)");
}
