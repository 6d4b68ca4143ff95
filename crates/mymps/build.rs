fn main() {
    // Only server builds link libtorch; a client-only build must not need it.
    if std::env::var_os("CARGO_FEATURE_SERVER").is_some() {
        link_libtorch()
    }
}
include!("../../build-support/libtorch.rs");
