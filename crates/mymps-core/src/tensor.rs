//! Host tensors: a dtype, a shape, optional strides, and the raw bytes.
//!
//! The bytes are a [`Bytes`]: cheap to clone, and able to own any buffer
//! (a `Vec<T>`, a received frame, a libtorch tensor) without copying it, so
//! tensor data goes from the socket to the backend and back without being
//! re-encoded.

use std::fmt;

use bytes::Bytes;

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};

/// A tensor in host memory.
///
/// Layout: element `(i0, i1, ...)` lives at byte offset
/// `itemsize * Σ i_k * stride_k`, where strides are in elements and default to
/// C order. Strides may be any non-negative values that stay inside the
/// buffer (a transposed or broadcast array is sent without copying), never
/// negative.
///
/// ```
/// use mymps_core::{DType, Tensor};
/// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
/// assert_eq!(t.dtype(), DType::Float32);
/// assert_eq!(t.shape(), &[2, 2]);
/// assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
/// ```
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    strides: Option<Vec<usize>>,
    data: Bytes,
}

/// The product of `shape`, or `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// C-order strides (in elements) of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d.max(1));
    }
    strides
}

struct VecOwner<T: Element>(Vec<T>);

impl<T: Element> AsRef<[u8]> for VecOwner<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl Tensor {
    /// A C-contiguous tensor over `data`; checks that `data` holds exactly
    /// `numel × itemsize` bytes.
    pub fn new(dtype: DType, shape: &[usize], data: impl Into<Bytes>) -> Result<Tensor> {
        Tensor::with_strides(dtype, shape, None, data.into())
    }

    /// A tensor with explicit element strides (`None` = C order); checks
    /// that every element lies inside `data`.
    pub fn with_strides(
        dtype: DType,
        shape: &[usize],
        strides: Option<&[usize]>,
        data: Bytes,
    ) -> Result<Tensor> {
        let numel = checked_numel(shape)
            .ok_or_else(|| Error::invalid_tensor(format!("shape {shape:?} overflows")))?;
        let item = dtype.itemsize();
        match strides {
            None => {
                let want = numel
                    .checked_mul(item)
                    .ok_or_else(|| Error::invalid_tensor(format!("shape {shape:?} overflows")))?;
                if data.len() != want {
                    return Err(Error::invalid_tensor(format!(
                        "data length {} != shape {shape:?} × itemsize {item} ({dtype}) = {want} bytes",
                        data.len()
                    )));
                }
            }
            Some(st) => {
                if st.len() != shape.len() {
                    return Err(Error::invalid_tensor(format!(
                        "strides {st:?} do not match shape {shape:?}"
                    )));
                }
                if data.len() % item != 0 {
                    return Err(Error::invalid_tensor(format!(
                        "data length {} is not a multiple of itemsize {item} ({dtype})",
                        data.len()
                    )));
                }
                if numel > 0 {
                    let max_offset = shape.iter().zip(st).try_fold(0usize, |acc, (&d, &s)| {
                        (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
                    });
                    let fits = max_offset
                        .and_then(|m| m.checked_add(1))
                        .and_then(|n| n.checked_mul(item))
                        .is_some_and(|need| need <= data.len());
                    if !fits {
                        return Err(Error::invalid_tensor(format!(
                            "shape {shape:?} with strides {st:?} reaches past the {} bytes of data",
                            data.len()
                        )));
                    }
                }
            }
        }
        let strides = strides
            .filter(|st| *st != contiguous_strides(shape).as_slice() || numel == 0)
            .map(<[usize]>::to_vec);
        let strides = if numel == 0 { None } else { strides };
        let data = match (numel, &strides) {
            (0, _) => Bytes::new(),
            // C order holds exactly numel × itemsize bytes, also when the
            // strides given were C order's over a longer buffer (checked
            // above to hold that many).
            (_, None) => data.slice(..numel * item),
            _ => data,
        };
        Ok(Tensor {
            dtype,
            shape: shape.to_vec(),
            strides,
            data,
        })
    }

    /// A C-contiguous tensor that takes ownership of `data` without copying.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Tensor::new(T::DTYPE, shape, Bytes::from_owner(VecOwner(data)))
    }

    /// A C-contiguous tensor copied from `data`.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        Tensor::new(
            T::DTYPE,
            shape,
            Bytes::copy_from_slice(bytemuck::cast_slice(data)),
        )
    }

    /// A `bool` tensor.
    pub fn from_bools(data: &[bool], shape: &[usize]) -> Result<Tensor> {
        let bytes: Vec<u8> = data.iter().map(|&b| b as u8).collect();
        Tensor::new(DType::Bool, shape, bytes)
    }

    /// A 0-d tensor holding one value.
    pub fn scalar<T: Element>(value: T) -> Tensor {
        Tensor::from_slice(&[value], &[]).expect("one element fits a 0-d shape")
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape (empty for a 0-d tensor).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element strides if the layout is not C order; `None` when contiguous.
    pub fn strides(&self) -> Option<&[usize]> {
        self.strides.as_deref()
    }

    /// Element strides, C order filled in.
    pub fn strides_or_contiguous(&self) -> Vec<usize> {
        self.strides
            .clone()
            .unwrap_or_else(|| contiguous_strides(&self.shape))
    }

    /// Whether the elements are laid out densely in C order.
    pub fn is_contiguous(&self) -> bool {
        self.strides.is_none()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        checked_numel(&self.shape).expect("checked at construction")
    }

    /// The raw bytes (the whole buffer, which for strided tensors may hold
    /// more than `numel` elements).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Consumes the tensor, giving the raw bytes.
    pub fn into_data(mut self) -> Bytes {
        std::mem::take(&mut self.data)
    }

    /// The bytes a C-contiguous copy takes: `numel × itemsize`, which for a
    /// strided view (a broadcast, stride 0) may be far more than
    /// [`data`](Self::data) holds. `None` on overflow.
    pub fn dense_len(&self) -> Option<usize> {
        self.numel().checked_mul(self.dtype.itemsize())
    }

    /// A C-contiguous copy (or `self` if already contiguous). Fails, without
    /// aborting, when the copy cannot be allocated (a stride-0 view of a
    /// few bytes may describe terabytes).
    pub fn contiguous(&self) -> Result<Tensor> {
        let Some(strides) = &self.strides else {
            return Ok(self.clone());
        };
        let item = self.dtype.itemsize();
        let len = self
            .dense_len()
            .ok_or_else(|| Error::invalid_tensor(format!("shape {:?} overflows", self.shape)))?;
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| {
            Error::new(
                crate::ErrorCode::PayloadTooLarge,
                format!(
                    "a contiguous copy of this {:?} {} view would take {len} bytes, more than can be allocated",
                    self.shape, self.dtype
                ),
            )
        })?;
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..self.numel() {
            let off: usize = index.iter().zip(strides).map(|(i, s)| i * s).sum();
            out.extend_from_slice(&self.data[off * item..(off + 1) * item]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(Tensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            strides: None,
            data: Bytes::from(out),
        })
    }

    fn check_dtype(&self, want: DType) -> Result<()> {
        if self.dtype != want {
            return Err(Error::invalid_tensor(format!(
                "tensor has dtype {}, not {want}",
                self.dtype
            )));
        }
        Ok(())
    }

    /// The elements, in C order, as a `Vec<T>`; `T` must match the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_dtype(T::DTYPE)?;
        let dense = self.contiguous()?;
        let mut out = vec![T::zeroed(); dense.numel()];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&dense.data);
        Ok(out)
    }

    /// The elements as a slice without copying, when the tensor is contiguous
    /// and its buffer is aligned for `T`.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        self.check_dtype(T::DTYPE)?;
        if !self.is_contiguous() {
            return Err(Error::invalid_tensor("tensor is not contiguous"));
        }
        bytemuck::try_cast_slice(&self.data)
            .map_err(|e| Error::invalid_tensor(format!("cannot view tensor data: {e}")))
    }

    /// The elements of a `bool` tensor, in C order.
    pub fn to_bools(&self) -> Result<Vec<bool>> {
        self.check_dtype(DType::Bool)?;
        Ok(self.contiguous()?.data.iter().map(|&b| b != 0).collect())
    }
}

/// A large tensor whose bytes nothing else refers to gives its memory back
/// to the pool of receive buffers as it drops (a received result dropped by
/// its reader, say), so that the next large tensor lands in memory already
/// faulted in. Whether nothing else refers to the bytes is their reference
/// count's answer ([`LargeBuf::reclaim`](crate::buffer::LargeBuf::reclaim)),
/// and only the pool's own buffers are kept.
impl Drop for Tensor {
    fn drop(&mut self) {
        if self.data.len() >= crate::buffer::LARGE {
            drop(crate::buffer::LargeBuf::reclaim(std::mem::take(
                &mut self.data,
            )));
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Tensor");
        d.field("dtype", &self.dtype).field("shape", &self.shape);
        if let Some(s) = &self.strides {
            d.field("strides", s);
        }
        d.field("nbytes", &self.data.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked() {
        assert!(Tensor::new(DType::Float32, &[2, 2], vec![0u8; 15]).is_err());
        assert!(Tensor::new(DType::Float32, &[2, 2], vec![0u8; 16]).is_ok());
        assert!(Tensor::new(DType::Float32, &[usize::MAX, 2], vec![0u8; 16]).is_err());
    }

    #[test]
    fn zero_d_and_empty() {
        let s = Tensor::scalar(7i64);
        assert_eq!(s.shape(), &[] as &[usize]);
        assert_eq!(s.to_vec::<i64>().unwrap(), vec![7]);
        let e = Tensor::new(DType::Float64, &[0, 3], Bytes::new()).unwrap();
        assert_eq!(e.numel(), 0);
    }

    #[test]
    fn strided_views_are_bounds_checked_and_gather_correctly() {
        // A 2x3 matrix stored transposed (3x2 buffer): element (i, j) at j*2 + i.
        let buf: Vec<f32> = vec![0., 3., 1., 4., 2., 5.];
        let data = Bytes::copy_from_slice(bytemuck::cast_slice(&buf));
        let t = Tensor::with_strides(DType::Float32, &[2, 3], Some(&[1, 2]), data.clone()).unwrap();
        assert!(!t.is_contiguous());
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        // Broadcast (stride 0) is fine; out of bounds is not.
        assert!(Tensor::with_strides(DType::Float32, &[4, 6], Some(&[0, 1]), data.clone()).is_ok());
        assert!(Tensor::with_strides(DType::Float32, &[2, 3], Some(&[3, 2]), data).is_err());
    }

    #[test]
    fn a_huge_broadcast_view_cannot_be_made_dense_but_does_not_abort() {
        // float32 [2^40] with stride 0 over 4 bytes: 4 TiB if made dense.
        let t = Tensor::with_strides(
            DType::Float32,
            &[1 << 40],
            Some(&[0]),
            Bytes::from(vec![0u8; 4]),
        )
        .unwrap();
        assert_eq!(t.dense_len(), Some(4 << 40));
        let e = t.contiguous().unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::PayloadTooLarge);
        assert!(t.to_vec::<f32>().is_err());
    }

    #[test]
    fn contiguous_strides_are_normalised_away() {
        let data = Bytes::from(vec![0u8; 24]);
        let t = Tensor::with_strides(DType::Float32, &[2, 3], Some(&[3, 1]), data).unwrap();
        assert!(t.is_contiguous());
    }

    /// Found by the `npy` fuzz target: C order's strides over a longer
    /// buffer made a contiguous tensor that kept the whole buffer, so its
    /// data was longer than numel × itemsize (`to_vec` panicked on it).
    #[test]
    fn contiguous_strides_over_a_longer_buffer_keep_only_the_tensor() {
        let data = Bytes::from((0..28u8).collect::<Vec<_>>());
        let t = Tensor::with_strides(DType::Float32, &[2, 3], Some(&[3, 1]), data).unwrap();
        assert!(t.is_contiguous());
        assert_eq!(t.data().len(), 24);
        assert_eq!(t.to_vec::<f32>().unwrap().len(), 6);
    }
}
