// Shared by the build scripts of every crate whose binaries (programs,
// tests, examples) link libtorch. Included with `include!`.
//
// - An rpath to libtorch's `lib/`, so binaries find it without
//   LD_LIBRARY_PATH.
// - `torch_cuda` linked with --no-as-needed where it exists: with the
//   default --as-needed the linker drops it (nothing references its symbols
//   directly), CUDA's hooks never register, and `tch::Cuda::is_available()`
//   is silently false on a CUDA machine.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(dir) = std::env::var("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run scripts/setup.sh (binaries will need LD_LIBRARY_PATH)");
        return;
    };
    let lib = std::path::Path::new(&dir).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
