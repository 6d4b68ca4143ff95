fn main() {
    link_libtorch()
}
include!("../../build-support/libtorch.rs");
