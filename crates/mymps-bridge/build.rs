// The bridge links libtorch (as every plugin) and torch's libtorch_python,
// and compiles src/thp.cpp against libtorch's and Python's headers. It does
// not link libpython: the plugin is loaded by mymps-models' launcher after
// the interpreter's shared library, found at run time, is loaded with
// RTLD_GLOBAL (see src/lib.rs).
fn main() {
    link_libtorch();
    println!("cargo:rerun-if-changed=src/thp.cpp");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo::rustc-check-cfg=cfg(mymps_no_python_headers)");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let libtorch = std::path::Path::new(&libtorch);
    // Python's headers: of $PYO3_PYTHON, else of the project's .venv (the
    // interpreter the server's torch comes from), else of python3.
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python");
    let pythons: Vec<String> = std::env::var("PYO3_PYTHON")
        .into_iter()
        .chain([venv.to_owned(), "python3".to_owned()])
        .collect();
    let python = pythons.join(", ");
    let include = pythons.iter().find_map(|p| {
        std::process::Command::new(p)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['include'])",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|d| std::path::Path::new(d).join("Python.h").is_file())
    });
    let Some(include) = include else {
        // The server and its native loaders do not need Python: build an
        // engine that says what is missing when it is asked to start.
        println!(
            "cargo:warning=mymps-bridge: no Python.h from {python} (set PYO3_PYTHON, or install Python's headers, e.g. python3-dev): the Python engine is built disabled"
        );
        println!("cargo:rustc-cfg=mymps_no_python_headers");
        return;
    };
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
