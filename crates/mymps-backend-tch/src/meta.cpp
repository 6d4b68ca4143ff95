// Meta tensors (shape, strides and dtype, no storage) for estimating the
// size of an op's outputs before it runs: an op on meta tensors runs
// libtorch's shape inference and allocates nothing. tch's `Device` has no
// meta device, hence this shim.
#include <ATen/ATen.h>
#include <cstring>

// A new at::Tensor* (what tch's Tensor wraps and frees) on the meta device,
// or null with `*err` set to a malloc'd message.
extern "C" void *mymps_empty_meta(const int64_t *sizes, const int64_t *strides, int64_t ndim,
                                  int scalar_type, char **err) {
  try {
    auto options = at::TensorOptions()
                       .dtype(static_cast<at::ScalarType>(scalar_type))
                       .device(at::kMeta);
    return new at::Tensor(at::empty_strided(at::IntArrayRef(sizes, ndim),
                                            at::IntArrayRef(strides, ndim), options));
  } catch (const std::exception &e) {
    *err = strdup(e.what());
    return nullptr;
  }
}
