//! The client contract's four examples, from Rust, with the blocking client.
//!
//! Start a server (`scripts/serve.sh`), then:
//!
//! ```text
//! cargo run -p mymps --example quickstart -- tcp://127.0.0.1:5555
//! ```

use mymps::Tensor;
use mymps::client::{Call, Caller, blocking::Client};

fn main() -> mymps::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MYMPS_ADDR").ok())
        .unwrap_or_else(|| "tcp://127.0.0.1:5555".into());
    let c = Client::connect(&addr)?;
    println!("connected to {addr}: device {}", c.health()?.device);

    // matmul: (64, 128) @ (128, 32)
    let a = Tensor::from_vec((0..64 * 128).map(|i| (i % 7) as f32).collect(), &[64, 128])?;
    let b = Tensor::from_vec((0..128 * 32).map(|i| (i % 5) as f32).collect(), &[128, 32])?;
    let out = c.call(Call::new("matmul").arg(a).arg(b))?;
    println!("matmul  -> {:?}", out.output()?.shape());

    // softmax along the last dimension: each row sums to 1
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 1.0, 1.0, 1.0], &[2, 3])?;
    let p: Vec<f32> = c
        .call(Call::new("softmax").arg(x).kwarg("dim", -1))?
        .output()?
        .to_vec()?;
    println!(
        "softmax -> {p:?} (rows sum to {:.3}, {:.3})",
        p[..3].iter().sum::<f32>(),
        p[3..].iter().sum::<f32>()
    );

    // svd: U, S, Vh come back as "0", "1", "2"
    let m = Tensor::from_vec(vec![3.0f64, 1.0, 1.0, -1.0, 3.0, 1.0], &[2, 3])?;
    let out = c.call(Call::new("svd").arg(m).kwarg("full_matrices", false))?;
    println!(
        "svd     -> singular values {:?}",
        out.get("1").expect("S").to_vec::<f64>()?
    );

    // conv2d: (1, 3, 32, 32) with (16, 3, 3, 3) -> (1, 16, 30, 30)
    let img = Tensor::from_vec(vec![0.5f32; 3 * 32 * 32], &[1, 3, 32, 32])?;
    let w = Tensor::from_vec(vec![0.1f32; 16 * 3 * 3 * 3], &[16, 3, 3, 3])?;
    let out = c.call(Call::new("conv2d").arg(img).arg(w))?;
    println!("conv2d  -> {:?}", out.output()?.shape());
    Ok(())
}
