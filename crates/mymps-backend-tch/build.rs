fn main() {
    link_libtorch();
    // src/device_cache.cpp: empties a device allocator's cache (tch does not
    // expose it), compiled against libtorch's headers like tch's own shim.
    println!("cargo:rerun-if-changed=src/device_cache.cpp");
    println!("cargo:rerun-if-changed=src/meta.cpp");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        cc::Build::new()
            .cpp(true)
            .pic(true)
            .warnings(false)
            .include(std::path::Path::new(&libtorch).join("include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .file("src/device_cache.cpp")
            .file("src/meta.cpp")
            .compile("mymps_device_cache");
    }
}
include!("../../build-support/libtorch.rs");
