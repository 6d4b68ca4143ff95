// The bridge links libtorch (as every plugin) and torch's libtorch_python,
// and compiles src/thp.cpp against libtorch's and Python's headers. It does
// not link libpython: the plugin is loaded by mymps-models' launcher after
// the interpreter's shared library, found at run time, is loaded with
// RTLD_GLOBAL (see src/lib.rs).
fn main() {
    link_libtorch();
    println!("cargo:rerun-if-changed=src/thp.cpp");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let libtorch = std::path::Path::new(&libtorch);
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let include = std::process::Command::new(&python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['include'])"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| panic!("mymps-bridge: cannot ask {python} for Python's include folder (set PYO3_PYTHON to a python3 with its headers)"));
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(&include)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("src/thp.cpp")
        .compile("mymps_thp");
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_python");
}
include!("../../build-support/libtorch.rs");
