//! `torch.fft`: discrete Fourier transforms and shifts.
//!
//! libtorch's C API takes `norm` as a plain string, where "" is not None:
//! None is passed as torch's default, "backward".

use tch::Tensor;

use crate::Outputs::One;
use crate::util::Out;
use crate::{Args, KernelResult, Param, op};

type Fft1 = fn(&Tensor, Option<i64>, i64, &str) -> Result<Tensor, tch::TchError>;
type FftN = fn(&Tensor, Option<&[i64]>, Option<&[i64]>, &str) -> Result<Tensor, tch::TchError>;

fn norm(a: &Args<Tensor>) -> KernelResult<&str> {
    Ok(a.opt_str("norm")?.unwrap_or("backward"))
}

fn fft1(a: &Args<Tensor>, f: Fft1) -> Out {
    crate::util::one(f(
        a.tensor("input")?,
        a.opt_int("n")?,
        a.int("dim")?,
        norm(a)?,
    )?)
}

fn fftn(a: &Args<Tensor>, f: FftN) -> Out {
    crate::util::one(f(
        a.tensor("input")?,
        a.opt_int_list("s")?,
        a.opt_int_list("dim")?,
        norm(a)?,
    )?)
}

/// fft2 and friends: `dim` defaults to the last two dimensions.
fn fft2(a: &Args<Tensor>, f: FftN) -> Out {
    crate::util::one(f(
        a.tensor("input")?,
        a.opt_int_list("s")?,
        Some(a.int_list("dim")?),
        norm(a)?,
    )?)
}

const INPUT: Param = Param::tensor("input");
const N: Param = Param::int("n").optional();
const DIM1: Param = Param::int("dim").or_int(-1);
const NORM: Param = Param::str("norm").optional();
const S: Param = Param::ints("s").optional();
const DIMS: Param = Param::ints("dim").optional();
const DIM2: Param = Param::ints("dim").or_ints(&[-2, -1]);

op!("fft", "fft", "1-D discrete Fourier transform; complex (torch.fft.fft)",
    [INPUT, N, DIM1, NORM] -> One, |a| fft1(a, |x, n, d, m| x.f_fft_fft(n, d, m)));
op!("ifft", "fft", "1-D inverse discrete Fourier transform; complex (torch.fft.ifft)",
    [INPUT, N, DIM1, NORM] -> One, |a| fft1(a, |x, n, d, m| x.f_fft_ifft(n, d, m)));
op!("rfft", "fft", "1-D Fourier transform of real input, non-negative frequencies (torch.fft.rfft)",
    [INPUT, N, DIM1, NORM] -> One, |a| fft1(a, |x, n, d, m| x.f_fft_rfft(n, d, m)));
op!("irfft", "fft", "inverse of rfft; real output of length n (torch.fft.irfft)",
    [INPUT, N, DIM1, NORM] -> One, |a| fft1(a, |x, n, d, m| x.f_fft_irfft(n, d, m)));
op!("hfft", "fft", "1-D Fourier transform of a Hermitian-symmetric signal; real (torch.fft.hfft)",
    [INPUT, N, DIM1, NORM] -> One, |a| fft1(a, |x, n, d, m| x.f_fft_hfft(n, d, m)));
op!("ihfft", "fft", "inverse of hfft, of real input (torch.fft.ihfft)",
    [INPUT, N, DIM1, NORM] -> One, |a| fft1(a, |x, n, d, m| x.f_fft_ihfft(n, d, m)));

op!("fft2", "fft", "2-D discrete Fourier transform (torch.fft.fft2)",
    [INPUT, S, DIM2, NORM] -> One, |a| fft2(a, |x, s, d, m| x.f_fft_fft2(s, d.unwrap_or(&[]), m)));
op!("ifft2", "fft", "2-D inverse discrete Fourier transform (torch.fft.ifft2)",
    [INPUT, S, DIM2, NORM] -> One, |a| fft2(a, |x, s, d, m| x.f_fft_ifft2(s, d.unwrap_or(&[]), m)));
op!("rfft2", "fft", "2-D Fourier transform of real input (torch.fft.rfft2)",
    [INPUT, S, DIM2, NORM] -> One, |a| fft2(a, |x, s, d, m| x.f_fft_rfft2(s, d.unwrap_or(&[]), m)));
op!("irfft2", "fft", "inverse of rfft2 (torch.fft.irfft2)",
    [INPUT, S, DIM2, NORM] -> One, |a| fft2(a, |x, s, d, m| x.f_fft_irfft2(s, d.unwrap_or(&[]), m)));

op!("hfft2", "fft", "2-D Fourier transform of a Hermitian-symmetric signal; real (torch.fft.hfft2)",
    [INPUT, S, DIM2, NORM] -> One, |a| fft2(a, |x, s, d, m| x.f_fft_hfft2(s, d.unwrap_or(&[]), m)));
op!("ihfft2", "fft", "inverse of hfft2, of real input (torch.fft.ihfft2)",
    [INPUT, S, DIM2, NORM] -> One, |a| fft2(a, |x, s, d, m| x.f_fft_ihfft2(s, d.unwrap_or(&[]), m)));

op!("fftn", "fft", "N-D discrete Fourier transform over dim (all by default) (torch.fft.fftn)",
    [INPUT, S, DIMS, NORM] -> One, |a| fftn(a, |x, s, d, m| x.f_fft_fftn(s, d, m)));
op!("ifftn", "fft", "N-D inverse discrete Fourier transform (torch.fft.ifftn)",
    [INPUT, S, DIMS, NORM] -> One, |a| fftn(a, |x, s, d, m| x.f_fft_ifftn(s, d, m)));
op!("rfftn", "fft", "N-D Fourier transform of real input (torch.fft.rfftn)",
    [INPUT, S, DIMS, NORM] -> One, |a| fftn(a, |x, s, d, m| x.f_fft_rfftn(s, d, m)));
op!("irfftn", "fft", "inverse of rfftn (torch.fft.irfftn)",
    [INPUT, S, DIMS, NORM] -> One, |a| fftn(a, |x, s, d, m| x.f_fft_irfftn(s, d, m)));

op!("hfftn", "fft", "N-D Fourier transform of a Hermitian-symmetric signal; real (torch.fft.hfftn)",
    [INPUT, S, DIMS, NORM] -> One, |a| fftn(a, |x, s, d, m| x.f_fft_hfftn(s, d, m)));
op!("ihfftn", "fft", "inverse of hfftn, of real input (torch.fft.ihfftn)",
    [INPUT, S, DIMS, NORM] -> One, |a| fftn(a, |x, s, d, m| x.f_fft_ihfftn(s, d, m)));

op!("fftshift", "fft", "moves the zero frequency to the center of dim (all by default) (torch.fft.fftshift)",
    [INPUT, DIMS] -> One, |a| crate::util::one(a.tensor("input")?.f_fft_fftshift(a.opt_int_list("dim")?)?));
op!("ifftshift", "fft", "inverse of fftshift (torch.fft.ifftshift)",
    [INPUT, DIMS] -> One, |a| crate::util::one(a.tensor("input")?.f_fft_ifftshift(a.opt_int_list("dim")?)?));
