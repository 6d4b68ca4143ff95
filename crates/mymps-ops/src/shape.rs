//! Shape and layout: reshape, permute, concatenation, splitting, flips,
//! repeats. Results may be views; the backend makes them contiguous.

use mymps_core::ParamKind;
use tch::Tensor;

use crate::Outputs::{List, One};
use crate::util::{bad, check_outputs, dim_size, dims_arg, one, tuple};
use crate::{Param, op};

const INPUT: Param = Param::tensor("input");

op!("reshape", "shape", "the same elements in a new shape; -1 infers one dimension (torch.reshape)",
    [INPUT, Param::ints("shape")] -> One,
    |a| one(a.tensor("input")?.f_reshape(dims_arg(a, "shape", 0)?)?));

op!("transpose", "shape", "swap dimensions dim0 and dim1 (torch.transpose)",
    [INPUT, Param::int("dim0"), Param::int("dim1")] -> One,
    |a| one(a.tensor("input")?.f_transpose(a.int("dim0")?, a.int("dim1")?)?));

op!("permute", "shape", "reorders the dimensions as dims (torch.permute)",
    [INPUT, Param::ints("dims")] -> One,
    |a| one(a.tensor("input")?.f_permute(a.int_list("dims")?)?));

op!("movedim", "shape", "moves dimensions source to positions destination (torch.movedim)",
    [INPUT, Param::ints("source"), Param::ints("destination")] -> One,
    |a| one(a.tensor("input")?.f_movedim(a.int_list("source")?, a.int_list("destination")?)?));

op!("squeeze", "shape", "removes dimensions of size 1: all, or those in dim (torch.squeeze)",
[INPUT, Param::ints("dim").optional()] -> One,
|a| {
    let x = a.tensor("input")?;
    match a.opt_int_list("dim")? {
        None => one(x.f_squeeze()?),
        Some(d) => one(x.f_squeeze_dims(d)?),
    }
});

op!("unsqueeze", "shape", "inserts a dimension of size 1 at dim (torch.unsqueeze)",
    [INPUT, Param::int("dim")] -> One,
    |a| one(a.tensor("input")?.f_unsqueeze(a.int("dim")?)?));

op!("flatten", "shape", "flattens dimensions start_dim..=end_dim into one (torch.flatten)",
    [INPUT, Param::int("start_dim").or_int(0), Param::int("end_dim").or_int(-1)] -> One,
    |a| one(a.tensor("input")?.f_flatten(a.int("start_dim")?, a.int("end_dim")?)?));

op!("unflatten", "shape", "splits dimension dim into sizes (torch.unflatten)",
    [INPUT, Param::int("dim"), Param::ints("sizes")] -> One,
|a| {
    let x = a.tensor("input")?;
    one(x.f_unflatten(a.int("dim")?, dims_arg(a, "sizes", x.dim().saturating_sub(1))?)?)
});

op!("contiguous", "shape", "the tensor in C-contiguous layout (torch.Tensor.contiguous)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_contiguous()?));

op!("broadcast_to", "shape", "input broadcast to size; -1 keeps a dimension (torch.broadcast_to)",
    [INPUT, Param::ints("size")] -> One,
    |a| one(a.tensor("input")?.f_broadcast_to(dims_arg(a, "size", 0)?)?));

op!("cat", "shape", "concatenates the tensors along dim (torch.cat)",
    [Param::tensors("tensors"), Param::int("dim").or_int(0)] -> One,
    |a| one(Tensor::f_cat(a.tensors("tensors")?, a.int("dim")?)?));

op!("stack", "shape", "stacks the tensors along a new dimension dim (torch.stack)",
    [Param::tensors("tensors"), Param::int("dim").or_int(0)] -> One,
    |a| one(Tensor::f_stack(a.tensors("tensors")?, a.int("dim")?)?));

op!("hstack", "shape", "concatenates column-wise (dim 1, or 0 for 1-D) (torch.hstack)",
    [Param::tensors("tensors")] -> One,
    |a| one(Tensor::f_hstack(a.tensors("tensors")?)?));

op!("vstack", "shape", "concatenates row-wise after making inputs at least 2-D (torch.vstack)",
    [Param::tensors("tensors")] -> One,
    |a| one(Tensor::f_vstack(a.tensors("tensors")?)?));

op!("dstack", "shape", "concatenates depth-wise after making inputs at least 3-D (torch.dstack)",
    [Param::tensors("tensors")] -> One,
    |a| one(Tensor::f_dstack(a.tensors("tensors")?)?));

op!("split", "shape", "splits into chunks of split_size_or_sections (an int), or of the listed sizes (torch.split)",
[Param::tensor("tensor"), Param::new("split_size_or_sections", ParamKind::IntOrIntList), Param::int("dim").or_int(0)] -> List,
|a| {
    let x = a.tensor("tensor")?;
    let dim = a.int("dim")?;
    match a.int_or_int_list("split_size_or_sections")? {
        Ok(size) => {
            if let (Some(n), true) = (dim_size(x, dim), size > 0) {
                check_outputs(a, n / size + i64::from(n % size != 0))?;
            }
            tuple(x.f_split(size, dim)?)
        }
        Err(sizes) => {
            check_outputs(a, sizes.len() as i64)?;
            tuple(x.f_split_with_sizes(sizes, dim)?)
        }
    }
});

op!("chunk", "shape", "splits into `chunks` near-equal chunks along dim (torch.chunk)",
    [INPUT, Param::int("chunks"), Param::int("dim").or_int(0)] -> List,
|a| {
    let (x, chunks, dim) = (a.tensor("input")?, a.int("chunks")?, a.int("dim")?);
    if let Some(n) = dim_size(x, dim) {
        check_outputs(a, chunks.min(n.max(1)))?;
    }
    tuple(x.f_chunk(chunks, dim)?)
});

op!("tensor_split", "shape", "splits into `sections` parts (an int), or at the listed indices (torch.tensor_split)",
[INPUT, Param::new("indices_or_sections", ParamKind::IntOrIntList), Param::int("dim").or_int(0)] -> List,
|a| {
    let x = a.tensor("input")?;
    let dim = a.int("dim")?;
    match a.int_or_int_list("indices_or_sections")? {
        Ok(sections) => {
            check_outputs(a, sections)?;
            tuple(x.f_tensor_split(sections, dim)?)
        }
        Err(indices) => {
            check_outputs(a, (indices.len() as i64).saturating_add(1))?;
            tuple(x.f_tensor_split_indices(indices, dim)?)
        }
    }
});

op!("unbind", "shape", "the slices along dim (torch.unbind)",
    [INPUT, Param::int("dim").or_int(0)] -> List,
|a| {
    let (x, dim) = (a.tensor("input")?, a.int("dim")?);
    if let Some(n) = dim_size(x, dim) {
        check_outputs(a, n)?;
    }
    tuple(x.f_unbind(dim)?)
});

op!("meshgrid", "shape", "coordinate grids from 1-D tensors; indexing \"ij\" or \"xy\" (torch.meshgrid)",
    [Param::tensors("tensors"), Param::str("indexing").or_str("ij")] -> List,
    |a| tuple(Tensor::f_meshgrid_indexing(a.tensors("tensors")?, a.str("indexing")?)?));

op!("flip", "shape", "reverses the order along dims (torch.flip)",
    [INPUT, Param::ints("dims")] -> One,
    |a| one(a.tensor("input")?.f_flip(a.int_list("dims")?)?));

op!("fliplr", "shape", "reverses the order of columns (torch.fliplr)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_fliplr()?));

op!("flipud", "shape", "reverses the order of rows (torch.flipud)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_flipud()?));

op!("roll", "shape", "rolls by shifts along dims; no dims: the flattened tensor (torch.roll)",
    [INPUT, Param::ints("shifts"), Param::ints("dims").or_ints(&[])] -> One,
    // libtorch rolls one dimension at a time, recursively: 20,000 shifts
    // overflowed the stack.
    |a| one(a.tensor("input")?.f_roll(dims_arg(a, "shifts", 0)?, dims_arg(a, "dims", 0)?)?));

op!("rot90", "shape", "rotates by 90° k times in the plane dims (torch.rot90)",
    [INPUT, Param::int("k").or_int(1), Param::ints("dims").or_ints(&[0, 1])] -> One,
    |a| one(a.tensor("input")?.f_rot90(a.int("k")?, a.int_list("dims")?)?));

op!("repeat", "shape", "tiles the tensor `repeats` times along each dimension (torch.Tensor.repeat)",
    [INPUT, Param::ints("repeats")] -> One,
    |a| one(a.tensor("input")?.f_repeat(dims_arg(a, "repeats", 0)?)?));

op!("tile", "shape", "repeats along each dimension, missing leading dims as 1 (torch.tile)",
    [INPUT, Param::ints("dims")] -> One,
    |a| one(a.tensor("input")?.f_tile(dims_arg(a, "dims", 0)?)?));

op!("repeat_interleave", "shape", "repeats each element `repeats` times (int or tensor), flattened or along dim (torch.repeat_interleave)",
[INPUT, Param::tensor_or_scalar("repeats"), Param::int("dim").optional()] -> One,
|a| {
    let x = a.tensor("input")?;
    let dim = a.opt_int("dim")?;
    match a.tensor_or_scalar("repeats")? {
        crate::TensorOrScalar::Tensor(r) => one(x.f_repeat_interleave_self_tensor(r, dim, None::<i64>)?),
        crate::TensorOrScalar::Scalar(crate::Scalar::Int(r)) => one(x.f_repeat_interleave_self_int(r, dim, None::<i64>)?),
        crate::TensorOrScalar::Scalar(_) => Err(bad(a, "repeats must be an int or a tensor")),
    }
});

op!("narrow", "shape", "length elements of dim starting at start (torch.narrow)",
    [INPUT, Param::int("dim"), Param::int("start"), Param::int("length")] -> One,
    |a| one(a.tensor("input")?.f_narrow(a.int("dim")?, a.int("start")?, a.int("length")?)?));

op!("select", "shape", "the slice at index along dim, dim removed (torch.select)",
    [INPUT, Param::int("dim"), Param::int("index")] -> One,
    |a| one(a.tensor("input")?.f_select(a.int("dim")?, a.int("index")?)?));

op!("view_as_real", "shape", "complex (…) as real (…, 2) (torch.view_as_real)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_view_as_real()?));

op!("view_as_complex", "shape", "real (…, 2) as complex (…) (torch.view_as_complex)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_contiguous()?.f_view_as_complex()?));

op!("complex", "shape", "complex tensor from real and imag parts (torch.complex)",
    [Param::tensor("real"), Param::tensor("imag")] -> One,
    |a| one(Tensor::f_complex(a.tensor("real")?, a.tensor("imag")?)?));

op!("polar", "shape", "complex tensor abs × (cos angle + i sin angle) (torch.polar)",
    [Param::tensor("abs"), Param::tensor("angle")] -> One,
    |a| one(Tensor::f_polar(a.tensor("abs")?, a.tensor("angle")?)?));

op!("block_diag", "shape", "block-diagonal matrix of the tensors (torch.block_diag)",
    [Param::tensors("tensors")] -> One,
    |a| one(Tensor::f_block_diag(a.tensors("tensors")?)?));

op!("cartesian_prod", "shape", "Cartesian product of 1-D tensors (torch.cartesian_prod)",
    [Param::tensors("tensors")] -> One,
    |a| one(Tensor::f_cartesian_prod(a.tensors("tensors")?)?));
