//! Element types that cross the wire.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorCode};

/// The element type of a tensor, named as numpy names it.
///
/// Every dtype round-trips exactly: what torch returns is what the client gets.
/// On the wire a dtype is its [`DType::name`] string, so a newer peer's dtype is
/// not a decode failure but a typed [`ErrorCode::InvalidTensor`] error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// `bool`, one byte per element (0 or 1).
    Bool,
    /// `uint8`.
    UInt8,
    /// `int8`.
    Int8,
    /// `int16`.
    Int16,
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `float16` (IEEE half).
    Float16,
    /// `bfloat16` (numpy through `ml_dtypes`).
    BFloat16,
    /// `float32`.
    Float32,
    /// `float64`.
    Float64,
    /// `complex64` (two float32).
    Complex64,
    /// `complex128` (two float64).
    Complex128,
}

impl DType {
    /// Every dtype, in a stable order.
    pub const ALL: [DType; 12] = [
        DType::Bool,
        DType::UInt8,
        DType::Int8,
        DType::Int16,
        DType::Int32,
        DType::Int64,
        DType::Float16,
        DType::BFloat16,
        DType::Float32,
        DType::Float64,
        DType::Complex64,
        DType::Complex128,
    ];

    /// The numpy name (`"float32"`, `"bfloat16"`, ...), also the wire name.
    pub const fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::UInt8 => "uint8",
            DType::Int8 => "int8",
            DType::Int16 => "int16",
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::Float16 => "float16",
            DType::BFloat16 => "bfloat16",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Complex64 => "complex64",
            DType::Complex128 => "complex128",
        }
    }

    /// Bytes per element.
    pub const fn itemsize(self) -> usize {
        match self {
            DType::Bool | DType::UInt8 | DType::Int8 => 1,
            DType::Int16 | DType::Float16 | DType::BFloat16 => 2,
            DType::Int32 | DType::Float32 => 4,
            DType::Int64 | DType::Float64 | DType::Complex64 => 8,
            DType::Complex128 => 16,
        }
    }

    /// Looks a dtype up by its numpy name; a few common aliases are accepted
    /// (`float`, `double`, `half`, `long`, `int`, `cfloat`, `cdouble`).
    pub fn from_name(name: &str) -> Option<DType> {
        Some(match name {
            "bool" => DType::Bool,
            "uint8" => DType::UInt8,
            "int8" => DType::Int8,
            "int16" => DType::Int16,
            "int32" | "int" => DType::Int32,
            "int64" | "long" => DType::Int64,
            "float16" | "half" => DType::Float16,
            "bfloat16" => DType::BFloat16,
            "float32" | "float" => DType::Float32,
            "float64" | "double" => DType::Float64,
            "complex64" | "cfloat" => DType::Complex64,
            "complex128" | "cdouble" => DType::Complex128,
            _ => return None,
        })
    }

    /// Whether the dtype is a floating-point type (not complex).
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            DType::Float16 | DType::BFloat16 | DType::Float32 | DType::Float64
        )
    }

    /// Whether the dtype is complex.
    pub const fn is_complex(self) -> bool {
        matches!(self, DType::Complex64 | DType::Complex128)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        DType::from_name(s).ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidTensor,
                format!(
                    "unknown dtype '{s}'; known dtypes: {}",
                    DType::ALL.map(DType::name).join(", ")
                ),
            )
        })
    }
}

impl serde::Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for DType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DType::from_name(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown dtype '{s}'")))
    }
}

/// A Rust element type with a [`DType`]: the types a [`crate::Tensor`] can be
/// built from or viewed as.
///
/// # Safety
/// Implementors must be plain old data whose size is `DTYPE.itemsize()` and
/// whose every bit pattern of that size is valid (true for all impls here;
/// `bool` is excluded for that reason and handled through `u8`).
pub unsafe trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        // SAFETY: each type is Pod with the itemsize of its dtype.
        unsafe impl Element for $t { const DTYPE: DType = DType::$d; }
    )*};
}
element!(
    u8 => UInt8, i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    half::f16 => Float16, half::bf16 => BFloat16, f32 => Float32, f64 => Float64,
    num_complex::Complex32 => Complex64, num_complex::Complex64 => Complex128,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_match_rust_types() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(
            std::mem::size_of::<num_complex::Complex64>(),
            DType::Complex128.itemsize()
        );
        assert_eq!(
            std::mem::size_of::<half::bf16>(),
            DType::BFloat16.itemsize()
        );
        assert!("float8".parse::<DType>().is_err());
    }
}
