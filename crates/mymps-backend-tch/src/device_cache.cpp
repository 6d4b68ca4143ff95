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
