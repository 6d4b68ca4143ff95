// Returns a device allocator's unused cached blocks to the device (what
// torch.cuda.empty_cache() does), so that unloading a model gives its
// device memory back. tch does not expose it. Device-agnostic (CUDA, MPS)
// through c10's DeviceAllocator interface; needs no CUDA headers.
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/DeviceType.h>

extern "C" int mymps_empty_device_cache(int device_type) {
  try {
    auto *allocator = c10::getDeviceAllocator(static_cast<c10::DeviceType>(device_type));
    if (allocator == nullptr || !allocator->initialized()) {
      return 0;
    }
    allocator->emptyCache();
    return 0;
  } catch (...) {
    return 1;
  }
}

// `nbytes` uninitialised bytes (a uint8 tensor) in pinned (page-locked)
// host memory from libtorch's caching host allocator: the destination of a
// device-to-host copy that runs at full DMA speed. (`empty().pin_memory()`
// through tch would first copy the empty tensor's untouched pages.)
// Returns a new at::Tensor* (what tch's Tensor wraps and frees), or null
// with `*err` set to a malloc'd message.
#include <ATen/ATen.h>
#include <cstring>

extern "C" void *mymps_empty_pinned_bytes(int64_t nbytes, char **err) {
  try {
    auto options = at::TensorOptions().dtype(at::kByte).pinned_memory(true);
    return new at::Tensor(at::empty({nbytes}, options));
  } catch (const std::exception &e) {
    *err = strdup(e.what());
    return nullptr;
  }
}
