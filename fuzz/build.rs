// The model-file targets link libtorch (through mymps-models and tch;
// they never call it): an rpath to it, as every binary of the project has
// (build-support/libtorch.rs, less its CUDA linking, which a fuzz target
// does not need).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_MODELS").is_none() {
        return;
    }
    match std::env::var("LIBTORCH") {
        Ok(dir) => println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib"),
        Err(_) => println!("cargo:warning=LIBTORCH is not set: run scripts/setup.sh"),
    }
}
