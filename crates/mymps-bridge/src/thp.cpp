// Tensors across the bridge: a libtorch tensor of the server (tch's
// `at::Tensor*`) as a Python `torch.Tensor` of the embedded interpreter, and
// back, through torch's own libtorch_python (the same libtorch in one
// process: the Python object and the Rust handle share one TensorImpl, no
// bytes are copied). Called with the GIL held.
#include <torch/csrc/autograd/python_variable.h>

extern "C" {

// A new reference to a Python tensor for `*t`, or NULL with a Python error.
PyObject* mymps_thp_wrap(const at::Tensor* t) {
    try {
        return THPVariable_Wrap(*t);
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return nullptr;
    }
}

// Whether `o` is a torch.Tensor (torch must have been imported).
int mymps_thp_check(PyObject* o) {
    return THPVariable_Check(o) ? 1 : 0;
}

// A new handle (tch's `at::Tensor*`, freed by tch) to the tensor of `o`, which
// must pass mymps_thp_check; NULL on failure.
at::Tensor* mymps_thp_unpack(PyObject* o) {
    try {
        return new at::Tensor(THPVariable_Unpack(o));
    } catch (...) {
        return nullptr;
    }
}

}
