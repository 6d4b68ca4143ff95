//! The op registry: op signatures, argument binding, and the `inventory`
//! collection that op crates submit to.
//!
//! An op is an [`OpEntry`]: a static [`OpSpec`] (name, category, one-line
//! doc, parameters with kinds and defaults, outputs, [`Cost`] class) plus a
//! kernel. The server decides from the cost class, never from names or
//! categories, what may run on its I/O thread and how large the outputs of
//! an op the backend cannot estimate can be. The kernel
//! is stored type-erased (`dyn Any`) because mymps-core knows nothing of any
//! tensor library: each backend looks for the kernel type it runs
//! (for tch, `mymps_ops::TchKernel`) and ignores the others.
//!
//! Third-party op crates register the same way as the built-in ones:
//!
//! ```ignore
//! inventory::submit! { mymps_core::OpEntry::new(MY_SPEC, &MY_KERNEL) }
//! ```
//!
//! Requests are checked against the signature by [`bind`] before any
//! backend code runs; a mismatch is a [`ErrorCode::BadArgument`] error that
//! names the op and shows its signature.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Error, ErrorCode, Result};
use crate::protocol::OpSummary;
use crate::value::Value;

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// One tensor, from `inputs`.
    Tensor,
    /// Any number of tensors: every remaining positional input (`cat`, `stack`).
    TensorList,
    /// A tensor from `inputs`, or a scalar kwarg (`add(input, other=2.0)`).
    TensorOrScalar,
    /// An integer.
    Int,
    /// A float (an int is accepted).
    Float,
    /// A number or bool, as torch's `Scalar`.
    Scalar,
    /// A bool.
    Bool,
    /// A string.
    Str,
    /// A list of ints; a single int is accepted (torch expands it).
    IntList,
    /// A list of floats; a single number is accepted.
    FloatList,
    /// A dtype name (`"float64"`).
    DType,
    /// A list of ints (or one int), or a string (`padding=1`, `padding="same"`).
    IntListOrStr,
    /// An int or a list of ints, kept apart where torch gives them different
    /// meanings (`split(split_size_or_sections=2)` is a chunk size,
    /// `=[2]` a list of sizes).
    IntOrIntList,
    /// A number or a string (`torch.norm(p=2)`, `p="fro"`).
    ScalarOrStr,
}

impl ParamKind {
    /// How the kind is shown in signatures.
    pub const fn display(self) -> &'static str {
        match self {
            ParamKind::Tensor => "Tensor",
            ParamKind::TensorList => "Tensor[]",
            ParamKind::TensorOrScalar => "Tensor | Scalar",
            ParamKind::Int => "int",
            ParamKind::Float => "float",
            ParamKind::Scalar => "Scalar",
            ParamKind::Bool => "bool",
            ParamKind::Str => "str",
            ParamKind::IntList => "int[]",
            ParamKind::FloatList => "float[]",
            ParamKind::DType => "dtype",
            ParamKind::IntListOrStr => "int[] | str",
            ParamKind::IntOrIntList => "int | int[]",
            ParamKind::ScalarOrStr => "Scalar | str",
        }
    }

    /// Whether the parameter can take tensors from `inputs`.
    pub const fn takes_tensor(self) -> bool {
        matches!(
            self,
            ParamKind::Tensor | ParamKind::TensorList | ParamKind::TensorOrScalar
        )
    }
}

/// A parameter's default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    /// The argument must be given.
    Required,
    /// Optional; absent means `None`.
    None,
    /// An int default.
    Int(i64),
    /// A float default.
    Float(f64),
    /// A bool default.
    Bool(bool),
    /// A string default.
    Str(&'static str),
    /// An int-list default.
    IntList(&'static [i64]),
}

impl ParamDefault {
    fn to_value(self) -> Option<Value> {
        Some(match self {
            ParamDefault::Required => return None,
            ParamDefault::None => Value::None,
            ParamDefault::Int(i) => Value::Int(i),
            ParamDefault::Float(x) => Value::Float(x),
            ParamDefault::Bool(b) => Value::Bool(b),
            ParamDefault::Str(s) => Value::Str(s.to_owned()),
            ParamDefault::IntList(l) => Value::List(l.iter().map(|&i| Value::Int(i)).collect()),
        })
    }
}

/// One parameter of an op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param {
    /// torch's argument name (`input`, `dim`, `keepdim`, ...).
    pub name: &'static str,
    /// Its type.
    pub kind: ParamKind,
    /// Its default.
    pub default: ParamDefault,
}

impl Param {
    /// A required parameter.
    pub const fn new(name: &'static str, kind: ParamKind) -> Param {
        Param {
            name,
            kind,
            default: ParamDefault::Required,
        }
    }
    /// A required tensor.
    pub const fn tensor(name: &'static str) -> Param {
        Param::new(name, ParamKind::Tensor)
    }
    /// A required tensor list.
    pub const fn tensors(name: &'static str) -> Param {
        Param::new(name, ParamKind::TensorList)
    }
    /// A required tensor-or-scalar.
    pub const fn tensor_or_scalar(name: &'static str) -> Param {
        Param::new(name, ParamKind::TensorOrScalar)
    }
    /// A required int.
    pub const fn int(name: &'static str) -> Param {
        Param::new(name, ParamKind::Int)
    }
    /// A required float.
    pub const fn float(name: &'static str) -> Param {
        Param::new(name, ParamKind::Float)
    }
    /// A required scalar.
    pub const fn scalar(name: &'static str) -> Param {
        Param::new(name, ParamKind::Scalar)
    }
    /// A required bool.
    pub const fn bool(name: &'static str) -> Param {
        Param::new(name, ParamKind::Bool)
    }
    /// A required string.
    pub const fn str(name: &'static str) -> Param {
        Param::new(name, ParamKind::Str)
    }
    /// A required int list.
    pub const fn ints(name: &'static str) -> Param {
        Param::new(name, ParamKind::IntList)
    }
    /// A required float list.
    pub const fn floats(name: &'static str) -> Param {
        Param::new(name, ParamKind::FloatList)
    }
    /// A required dtype.
    pub const fn dtype(name: &'static str) -> Param {
        Param::new(name, ParamKind::DType)
    }
    /// Makes the parameter optional with default `None`.
    pub const fn optional(self) -> Param {
        self.with_default(ParamDefault::None)
    }
    /// Sets the default.
    pub const fn with_default(mut self, default: ParamDefault) -> Param {
        self.default = default;
        self
    }
    /// Sets an int default.
    pub const fn or_int(self, v: i64) -> Param {
        self.with_default(ParamDefault::Int(v))
    }
    /// Sets a float default.
    pub const fn or_float(self, v: f64) -> Param {
        self.with_default(ParamDefault::Float(v))
    }
    /// Sets a bool default.
    pub const fn or_bool(self, v: bool) -> Param {
        self.with_default(ParamDefault::Bool(v))
    }
    /// Sets a string default.
    pub const fn or_str(self, v: &'static str) -> Param {
        self.with_default(ParamDefault::Str(v))
    }
    /// Sets an int-list default.
    pub const fn or_ints(self, v: &'static [i64]) -> Param {
        self.with_default(ParamDefault::IntList(v))
    }
}

/// What an op returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// One tensor, returned as `"output"`.
    One,
    /// A fixed tuple, returned as `"0"`, `"1"`, ...; the names are for docs
    /// (`svd`: `U`, `S`, `Vh`).
    Tuple(&'static [&'static str]),
    /// A variable number of tensors (`split`, `chunk`), `"0"`, `"1"`, ... .
    List,
}

impl Outputs {
    /// How many tensors the op returns; `None` for a [`Outputs::List`],
    /// whose length depends on the arguments.
    pub const fn count(self) -> Option<usize> {
        match self {
            Outputs::One => Some(1),
            Outputs::Tuple(names) => Some(names.len()),
            Outputs::List => None,
        }
    }
}

/// What running an op costs, as its declaration states it: the server
/// reads it (never the op's name or category) to decide what may run on
/// its I/O thread and how large the outputs of an op the backend cannot
/// estimate can be.
///
/// The two linear classes ([`Cost::is_linear`]) are a promise about every
/// call, whatever its arguments: the op's **work is linear** in its tensor
/// inputs broadcast together (a bounded number of passes, a bounded amount
/// of work per element), and it returns at most [`Outputs::count`] tensors
/// (never a list), **each of at most that broadcast element count** (for
/// inputs that do not broadcast by numpy's rules, which an element-wise op
/// refuses: the largest input's), of any dtype (so at most
/// [`Cost::MAX_ITEMSIZE`] bytes an element: a `dtype=` argument or a
/// promotion may widen them). [`OpSpec::output_bound`] is that bound. An op that breaks the promise for some arguments (a sort, a
/// selection, an `n`-th difference, a matrix norm among vector norms) is
/// [`Cost::Heavy`]. `Heavy` is the default of [`OpSpec::new`] and the safe
/// answer: it only means "run it on a worker, and size its outputs by
/// shape inference alone".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cost {
    /// Each output element comes from the input elements at its own
    /// position, the inputs broadcast together (numpy's rules), with a
    /// bounded amount of work: `add`, `exp`, `where`, `clamp`, `eq`,
    /// `relu`, `dropout`. Such an op could run on chunks of its inputs.
    Elementwise,
    /// Linear work, outputs no larger than the inputs, but an output
    /// element may depend on many input elements: reductions, scans and
    /// normalisations along dimensions (`sum`, `argmax`, `cumsum`, `var`,
    /// `softmax`), per-channel ops (`prelu`, `glu`).
    Reduction,
    /// Anything else: work superlinear in the inputs (`sort`, `matmul`,
    /// `median`), outputs larger than them (`repeat`, `outer`, `cat`), or
    /// either depending on argument values (`diff`'s `n`); plugin ops unless
    /// they say otherwise.
    Heavy,
}

impl Cost {
    /// The most bytes an element of any dtype takes (complex128).
    pub const MAX_ITEMSIZE: u64 = 16;

    /// Whether work and outputs are bounded by the tensor inputs
    /// broadcast together (see the type's docs): [`Cost::Elementwise`] and
    /// [`Cost::Reduction`].
    pub const fn is_linear(self) -> bool {
        matches!(self, Cost::Elementwise | Cost::Reduction)
    }

    /// The class's name, as docs and errors show it.
    pub const fn name(self) -> &'static str {
        match self {
            Cost::Elementwise => "elementwise",
            Cost::Reduction => "reduction",
            Cost::Heavy => "heavy",
        }
    }
}

/// The static description of an op.
#[derive(Debug, Clone, Copy)]
pub struct OpSpec {
    /// Name, as clients call it.
    pub name: &'static str,
    /// Category, for listing (`elementwise`, `linalg`, `reduction`, ...);
    /// nothing but listings reads it.
    pub category: &'static str,
    /// One-line doc.
    pub doc: &'static str,
    /// Parameters, in torch's order.
    pub params: &'static [Param],
    /// What it returns.
    pub outputs: Outputs,
    /// What running it costs.
    pub cost: Cost,
}

impl OpSpec {
    /// A spec of [`Cost::Heavy`] (set another with [`OpSpec::with_cost`]).
    pub const fn new(
        name: &'static str,
        category: &'static str,
        doc: &'static str,
        params: &'static [Param],
        outputs: Outputs,
    ) -> OpSpec {
        OpSpec {
            name,
            category,
            doc,
            params,
            outputs,
            cost: Cost::Heavy,
        }
    }

    /// Sets the cost class.
    pub const fn with_cost(mut self, cost: Cost) -> OpSpec {
        self.cost = cost;
        self
    }

    /// Whether the op takes exactly one tensor and nothing else, and
    /// returns one tensor (the ops that may have an in-place variant).
    pub const fn is_unary(&self) -> bool {
        matches!(self.params, [p] if matches!(p.kind, ParamKind::Tensor))
            && matches!(self.outputs, Outputs::One)
    }

    /// The most bytes the op's outputs can take on tensor inputs of
    /// `shapes`, as its cost class promises (see [`Cost`]): `None` unless
    /// the class [is linear](Cost::is_linear); else [`Outputs::count`]
    /// tensors of [`Cost::MAX_ITEMSIZE`] bytes an element, each of the
    /// inputs' broadcast element count — or, for inputs that do not
    /// broadcast by numpy's rules, the largest input's (saturating at
    /// `u64::MAX`, which no budget admits).
    pub fn output_bound<'a>(&self, shapes: impl IntoIterator<Item = &'a [usize]>) -> Option<u64> {
        if !self.cost.is_linear() {
            return None;
        }
        let count = self.outputs.count()? as u64;
        let mut broadcast: Option<Vec<u64>> = Some(Vec::new());
        let mut largest = 0u64;
        for s in shapes {
            let numel = s
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .unwrap_or(u64::MAX);
            largest = largest.max(numel);
            let Some(b) = broadcast.as_mut() else {
                continue;
            };
            if s.len() > b.len() {
                b.splice(0..0, std::iter::repeat_n(1, s.len() - b.len()));
            }
            let offset = b.len() - s.len();
            for (i, &d) in s.iter().enumerate() {
                let (d, e) = (d as u64, &mut b[offset + i]);
                if *e == 1 {
                    *e = d;
                } else if d != 1 && d != *e {
                    broadcast = None;
                    break;
                }
            }
        }
        let numel = match broadcast {
            Some(b) => b
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .unwrap_or(u64::MAX),
            None => largest,
        };
        Some(
            numel
                .saturating_mul(Cost::MAX_ITEMSIZE)
                .saturating_mul(count),
        )
    }

    /// The signature, e.g.
    /// `softmax(input: Tensor, dim: int, dtype: dtype? = None) -> Tensor`.
    pub fn signature(&self) -> String {
        let mut s = format!("{}(", self.name);
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{}: {}", p.name, p.kind.display());
            match p.default {
                ParamDefault::Required => {}
                ParamDefault::None => s.push_str("? = None"),
                d => {
                    let _ = write!(s, " = {}", d.to_value().expect("not required"));
                }
            }
        }
        s.push_str(") -> ");
        match self.outputs {
            Outputs::One => s.push_str("Tensor"),
            Outputs::Tuple(names) => {
                let _ = write!(s, "({})", names.join(", "));
            }
            Outputs::List => s.push_str("Tensor[]"),
        }
        s
    }

    /// Checks the spec itself: unique parameter names, defaults that match
    /// their kinds, at most one tensor list. Op crates test every spec with it.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::internal(format!("op spec '{}': {m}", self.name)));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return fail("bad name".into());
        }
        if self.doc.is_empty() || self.doc.contains('\n') {
            return fail("the doc must be one line".into());
        }
        for (i, p) in self.params.iter().enumerate() {
            if self.params[..i].iter().any(|q| q.name == p.name) {
                return fail(format!("parameter '{}' twice", p.name));
            }
            if p.name.parse::<usize>().is_ok() {
                return fail(format!("parameter name '{}' is numeric", p.name));
            }
            let ok = match p.default {
                ParamDefault::Required | ParamDefault::None => true,
                ParamDefault::Int(_) => matches!(
                    p.kind,
                    ParamKind::Int
                        | ParamKind::Float
                        | ParamKind::Scalar
                        | ParamKind::TensorOrScalar
                        | ParamKind::IntList
                        | ParamKind::IntOrIntList
                        | ParamKind::ScalarOrStr
                ),
                ParamDefault::Float(_) => matches!(
                    p.kind,
                    ParamKind::Float
                        | ParamKind::Scalar
                        | ParamKind::TensorOrScalar
                        | ParamKind::FloatList
                        | ParamKind::ScalarOrStr
                ),
                ParamDefault::Bool(_) => matches!(p.kind, ParamKind::Bool | ParamKind::Scalar),
                ParamDefault::Str(_) => matches!(
                    p.kind,
                    ParamKind::Str
                        | ParamKind::DType
                        | ParamKind::IntListOrStr
                        | ParamKind::ScalarOrStr
                ),
                ParamDefault::IntList(_) => matches!(
                    p.kind,
                    ParamKind::IntList | ParamKind::IntListOrStr | ParamKind::IntOrIntList
                ),
            };
            if !ok {
                return fail(format!(
                    "default of '{}' does not match {}",
                    p.name,
                    p.kind.display()
                ));
            }
        }
        if self
            .params
            .iter()
            .filter(|p| p.kind == ParamKind::TensorList)
            .count()
            > 1
        {
            return fail("more than one tensor list".into());
        }
        if self.cost.is_linear() {
            // The bound of `output_bound` counts outputs and broadcasts
            // single tensors: neither a list out nor a list in fits it.
            if self.outputs.count().is_none() {
                return fail(format!(
                    "a {} op returns a fixed number of tensors, not a list",
                    self.cost.name()
                ));
            }
            if self.params.iter().any(|p| p.kind == ParamKind::TensorList) {
                return fail(format!(
                    "a {} op takes no tensor list (its outputs are bounded by single tensors broadcast together)",
                    self.cost.name()
                ));
            }
        }
        Ok(())
    }

    /// The wire description.
    pub fn info(&self) -> OpInfo {
        OpInfo {
            name: self.name.to_owned(),
            category: self.category.to_owned(),
            doc: self.doc.to_owned(),
            signature: self.signature(),
            params: self
                .params
                .iter()
                .map(|p| ParamInfo {
                    name: p.name.to_owned(),
                    kind: p.kind.display().to_owned(),
                    required: p.default == ParamDefault::Required,
                    default: p.default.to_value(),
                })
                .collect(),
            outputs: match self.outputs {
                Outputs::One => vec!["output".to_owned()],
                Outputs::Tuple(n) => n.iter().map(|s| s.to_string()).collect(),
                Outputs::List => vec!["*".to_owned()],
            },
        }
    }
}

/// An op's description as `describe_op` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpInfo {
    /// Name.
    pub name: String,
    /// Category.
    pub category: String,
    /// One-line doc.
    pub doc: String,
    /// Human-readable signature.
    pub signature: String,
    /// Parameters in order.
    pub params: Vec<ParamInfo>,
    /// Output names: `["output"]` for one tensor, the tuple's names, or
    /// `["*"]` for a variable-length list.
    pub outputs: Vec<String>,
}

/// One parameter in an [`OpInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamInfo {
    /// Name.
    pub name: String,
    /// Kind as shown in signatures.
    pub kind: String,
    /// Whether it must be given.
    pub required: bool,
    /// Its default (`None` value for optional, absent for required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// A kernel, type-erased.
#[derive(Clone, Copy)]
pub enum Kernel {
    /// A kernel linked into this binary; each backend downcasts to the kernel
    /// type it runs.
    Native(&'static (dyn Any + Send + Sync)),
    /// A kernel from a plugin, called through its vtable: `TypeId`s differ
    /// between separately built binaries, so plugins cannot use `Native`.
    Foreign(&'static dyn ForeignKernel),
}

/// A plugin's kernel, called across the plugin boundary.
pub trait ForeignKernel: Send + Sync {
    /// The backend it is for (`tch`).
    fn backend(&self) -> &'static str;

    /// Runs the kernel.
    ///
    /// # Safety
    /// `args` must point to the backend's argument type and `out` to its
    /// result slot, as the backend's plugin interface defines them (for tch:
    /// `Args<tch::Tensor>` and `Option<KernelResult<OpOutput<tch::Tensor>>>`);
    /// the plugin header check guarantees both sides were built from the same
    /// versions. Implementations catch their own panics.
    unsafe fn call(&self, args: *const (), out: *mut ());

    /// Whether the kernel has an in-place variant (a unary op's, see
    /// [`ForeignKernel::call_in_place`]). Default: no.
    fn has_in_place(&self) -> bool {
        false
    }

    /// Runs the in-place variant. Default: writes nothing (the backend
    /// then reports an error; it only calls this when
    /// [`ForeignKernel::has_in_place`]).
    ///
    /// # Safety
    /// `tensor` must point to the backend's tensor type, over memory that
    /// the caller owns exclusively for the call, and `out` to its result
    /// slot, as the backend's plugin interface defines them (for tch:
    /// `tch::Tensor` and `Option<KernelResult<tch::Tensor>>`). As for
    /// [`ForeignKernel::call`], the header check vouches for the layouts,
    /// and implementations catch their own panics.
    unsafe fn call_in_place(&self, tensor: *mut (), out: *mut ()) {
        let _ = (tensor, out);
    }
}

/// A registered op: its spec and its kernel.
pub struct OpEntry {
    /// The signature and docs.
    pub spec: OpSpec,
    /// The kernel.
    pub kernel: Kernel,
}

impl OpEntry {
    /// A new entry with a native kernel (usable in `inventory::submit!`).
    pub const fn new(spec: OpSpec, kernel: &'static (dyn Any + Send + Sync)) -> OpEntry {
        OpEntry {
            spec,
            kernel: Kernel::Native(kernel),
        }
    }

    /// A new entry with a plugin's kernel.
    pub const fn foreign(spec: OpSpec, kernel: &'static dyn ForeignKernel) -> OpEntry {
        OpEntry {
            spec,
            kernel: Kernel::Foreign(kernel),
        }
    }
}

impl fmt::Debug for OpEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpEntry")
            .field("spec", &self.spec.name)
            .finish_non_exhaustive()
    }
}

inventory::collect!(OpEntry);

/// A set of ops by name, sorted.
#[derive(Debug, Default, Clone)]
pub struct OpRegistry {
    ops: BTreeMap<&'static str, &'static OpEntry>,
}

impl OpRegistry {
    /// An empty registry.
    pub fn new() -> OpRegistry {
        OpRegistry::default()
    }

    /// Every op submitted with `inventory` and linked into this binary whose
    /// kernel satisfies `keep` (a backend keeps the kernels it can run).
    pub fn from_inventory(keep: impl Fn(&OpEntry) -> bool) -> Result<OpRegistry> {
        let mut r = OpRegistry::new();
        for e in inventory::iter::<OpEntry> {
            if keep(e) {
                r.register(e)?;
            }
        }
        Ok(r)
    }

    /// Adds an op; a second op of the same name is refused (a third-party
    /// crate cannot silently replace a built-in op).
    pub fn register(&mut self, entry: &'static OpEntry) -> Result<()> {
        entry.spec.validate()?;
        if self.ops.contains_key(entry.spec.name) {
            return Err(Error::internal(format!(
                "op '{}' is registered twice",
                entry.spec.name
            )));
        }
        self.ops.insert(entry.spec.name, entry);
        Ok(())
    }

    /// The op called `name`.
    pub fn get(&self, name: &str) -> Option<&'static OpEntry> {
        self.ops.get(name).copied()
    }

    /// The op called `name`, or an [`ErrorCode::UnknownOp`] error that
    /// suggests close names.
    pub fn lookup(&self, name: &str) -> Result<&'static OpEntry> {
        self.get(name).ok_or_else(|| {
            // Suggestions cost O(ops × len²): only for names that could be a
            // typo of a real one (within the edit distance of 2 that counts as
            // close), never for a long name a client made up.
            let longest = self.ops.keys().map(|k| k.len()).max().unwrap_or(0);
            let close: Vec<&str> = if name.is_empty() || name.len() > longest + 2 {
                Vec::new()
            } else {
                self.ops
                    .keys()
                    .copied()
                    .filter(|k| k.contains(name) || name.contains(k) || edit_distance(k, name) <= 2)
                    .take(5)
                    .collect()
            };
            let hint = if close.is_empty() {
                " (`list_ops` gives the whitelist)".to_owned()
            } else {
                format!("; did you mean {}?", close.join(", "))
            };
            Error::new(
                ErrorCode::UnknownOp,
                format!("unknown op '{}'{hint}", crate::error::clip(name, 64)),
            )
        })
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The ops, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &'static OpEntry> + '_ {
        self.ops.values().copied()
    }

    /// Name, category and doc of each op, sorted by name.
    pub fn summaries(&self) -> Vec<OpSummary> {
        self.iter()
            .map(|e| OpSummary {
                name: e.spec.name.to_owned(),
                category: e.spec.category.to_owned(),
                doc: e.spec.doc.to_owned(),
            })
            .collect()
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + (ca != cb) as usize)
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A bound argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg<T> {
    /// `None` (an optional argument not given, or given as None).
    None,
    /// A tensor.
    Tensor(T),
    /// A list of tensors.
    Tensors(Vec<T>),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A bool.
    Bool(bool),
    /// A string.
    Str(String),
    /// A list of ints.
    IntList(Vec<i64>),
    /// A list of floats.
    FloatList(Vec<f64>),
    /// A dtype.
    DType(DType),
}

/// A torch `Scalar`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Bool.
    Bool(bool),
}

impl Scalar {
    /// As a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Scalar::Int(i) => i as f64,
            Scalar::Float(x) => x,
            Scalar::Bool(b) => b as i64 as f64,
        }
    }
}

/// A tensor or a scalar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TensorOrScalar<'a, T> {
    /// A tensor.
    Tensor(&'a T),
    /// A scalar.
    Scalar(Scalar),
}

/// Arguments bound to an op's parameters, defaults filled in.
#[derive(Debug, Clone)]
pub struct Args<T> {
    spec: &'static OpSpec,
    values: Vec<Arg<T>>,
}

/// Binds a request's tensors and kwargs to `spec`'s parameters.
///
/// `inputs` keys `"0"`, `"1"`, ... are positional and fill the tensor
/// parameters in order (a tensor list takes all remaining ones); other keys
/// name a tensor parameter. `kwargs` name scalar parameters (or a
/// tensor-or-scalar one). Every problem is a [`ErrorCode::BadArgument`]
/// error naming the op and its signature.
pub fn bind<T>(
    spec: &'static OpSpec,
    inputs: Vec<(String, T)>,
    kwargs: BTreeMap<String, Value>,
) -> Result<Args<T>> {
    let bad = |m: String| {
        Error::bad_argument(format!(
            "{}(): {m}; signature: {}",
            spec.name,
            spec.signature()
        ))
    };
    let mut values: Vec<Option<Arg<T>>> = spec.params.iter().map(|_| None).collect();
    let index_of = |name: &str| spec.params.iter().position(|p| p.name == name);

    let mut positional: Vec<(usize, T)> = Vec::new();
    let mut named: Vec<(String, T)> = Vec::new();
    for (k, t) in inputs {
        match k.parse::<usize>() {
            Ok(i) if k == i.to_string() => positional.push((i, t)),
            _ => named.push((k, t)),
        }
    }
    positional.sort_by_key(|(i, _)| *i);
    if positional.iter().enumerate().any(|(n, (i, _))| n != *i) {
        let got: Vec<String> = positional.iter().map(|(i, _)| i.to_string()).collect();
        return Err(bad(format!(
            "positional inputs must be numbered \"0\", \"1\", ... without gaps; got {}",
            got.join(", ")
        )));
    }
    let n_positional = positional.len();
    let mut positional = positional.into_iter().map(|(_, t)| t).peekable();
    for (slot, p) in spec.params.iter().enumerate() {
        if positional.peek().is_none() {
            break;
        }
        match p.kind {
            ParamKind::TensorList => {
                values[slot] = Some(Arg::Tensors(positional.by_ref().collect()))
            }
            ParamKind::Tensor | ParamKind::TensorOrScalar => {
                values[slot] = Some(Arg::Tensor(positional.next().expect("peeked")))
            }
            _ => {}
        }
    }
    if positional.peek().is_some() {
        let slots = spec.params.iter().filter(|p| p.kind.takes_tensor()).count();
        return Err(bad(format!(
            "takes at most {slots} positional tensor(s) but {n_positional} were given"
        )));
    }
    for (k, t) in named {
        let Some(slot) = index_of(&k) else {
            return Err(bad(format!("unexpected tensor input '{k}'")));
        };
        let p = &spec.params[slot];
        if !p.kind.takes_tensor() {
            return Err(bad(format!(
                "'{k}' is {}, pass it as a keyword argument, not a tensor input",
                p.kind.display()
            )));
        }
        if values[slot].is_some() {
            return Err(bad(format!("got multiple values for argument '{k}'")));
        }
        values[slot] = Some(match p.kind {
            ParamKind::TensorList => Arg::Tensors(vec![t]),
            _ => Arg::Tensor(t),
        });
    }
    for (k, v) in kwargs {
        let Some(slot) = index_of(&k) else {
            return Err(bad(format!("unexpected keyword argument '{k}'")));
        };
        if values[slot].is_some() {
            return Err(bad(format!("got multiple values for argument '{k}'")));
        }
        let p = &spec.params[slot];
        values[slot] = Some(convert(p, v).map_err(bad)?);
    }
    let mut out = Vec::with_capacity(values.len());
    for (p, v) in spec.params.iter().zip(values) {
        out.push(match v {
            Some(v) => v,
            None => match p.default.to_value() {
                None => return Err(bad(format!("missing required argument '{}'", p.name))),
                Some(d) => convert(p, d)
                    .map_err(|m| Error::internal(format!("{}: bad default: {m}", spec.name)))?,
            },
        });
    }
    Ok(Args { spec, values: out })
}

fn convert<T>(p: &Param, v: Value) -> std::result::Result<Arg<T>, String> {
    let wrong = |v: &Value| {
        format!(
            "argument '{}' must be {}, not {} ({v})",
            p.name,
            p.kind.display(),
            v.type_name()
        )
    };
    if v == Value::None {
        return if p.default == ParamDefault::None {
            Ok(Arg::None)
        } else {
            Err(format!(
                "argument '{}' must be {}, not None",
                p.name,
                p.kind.display()
            ))
        };
    }
    let int_of = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    let float_of = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    };
    Ok(match (p.kind, &v) {
        (ParamKind::Tensor | ParamKind::TensorList, _) => {
            return Err(format!(
                "argument '{}' is {}: send it in inputs, not as a keyword argument",
                p.name,
                p.kind.display()
            ));
        }
        (ParamKind::Int, Value::Int(i)) => Arg::Int(*i),
        (ParamKind::Float, _) if float_of(&v).is_some() => {
            Arg::Float(float_of(&v).expect("checked"))
        }
        (ParamKind::Scalar | ParamKind::TensorOrScalar | ParamKind::ScalarOrStr, Value::Int(i)) => {
            Arg::Int(*i)
        }
        (
            ParamKind::Scalar | ParamKind::TensorOrScalar | ParamKind::ScalarOrStr,
            Value::Float(x),
        ) => Arg::Float(*x),
        (ParamKind::Scalar | ParamKind::TensorOrScalar, Value::Bool(b)) => Arg::Bool(*b),
        (ParamKind::ScalarOrStr, Value::Str(s)) => Arg::Str(s.clone()),
        (ParamKind::Bool, Value::Bool(b)) => Arg::Bool(*b),
        (ParamKind::Str, Value::Str(s)) => Arg::Str(s.clone()),
        (ParamKind::DType, Value::Str(s)) => Arg::DType(s.parse().map_err(|e: Error| e.message)?),
        (ParamKind::IntListOrStr, Value::Str(s)) => Arg::Str(s.clone()),
        (ParamKind::IntOrIntList, Value::Int(i)) => Arg::Int(*i),
        (ParamKind::IntList | ParamKind::IntListOrStr, Value::Int(i)) => Arg::IntList(vec![*i]),
        (
            ParamKind::IntList | ParamKind::IntListOrStr | ParamKind::IntOrIntList,
            Value::List(l),
        ) => Arg::IntList(
            l.iter()
                .map(|x| int_of(x).ok_or_else(|| wrong(&v)))
                .collect::<std::result::Result<_, _>>()?,
        ),
        (ParamKind::FloatList, Value::Int(_) | Value::Float(_)) => {
            Arg::FloatList(vec![float_of(&v).expect("number")])
        }
        (ParamKind::FloatList, Value::List(l)) => Arg::FloatList(
            l.iter()
                .map(|x| float_of(x).ok_or_else(|| wrong(&v)))
                .collect::<std::result::Result<_, _>>()?,
        ),
        _ => return Err(wrong(&v)),
    })
}

impl<T> Args<T> {
    /// The op these arguments are bound to.
    pub fn spec(&self) -> &'static OpSpec {
        self.spec
    }

    /// The bound value of parameter `name`.
    pub fn get(&self, name: &str) -> Result<&Arg<T>> {
        self.spec
            .params
            .iter()
            .position(|p| p.name == name)
            .map(|i| &self.values[i])
            .ok_or_else(|| {
                Error::internal(format!("op '{}' has no parameter '{name}'", self.spec.name))
            })
    }

    fn mismatch(&self, name: &str, want: &str) -> Error {
        Error::internal(format!(
            "op '{}': parameter '{name}' is not {want} (kernel and spec disagree)",
            self.spec.name
        ))
    }

    /// A required tensor.
    pub fn tensor(&self, name: &str) -> Result<&T> {
        match self.get(name)? {
            Arg::Tensor(t) => Ok(t),
            _ => Err(self.mismatch(name, "a tensor")),
        }
    }

    /// An optional tensor.
    pub fn opt_tensor(&self, name: &str) -> Result<Option<&T>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::Tensor(t) => Ok(Some(t)),
            _ => Err(self.mismatch(name, "a tensor")),
        }
    }

    /// A tensor list.
    pub fn tensors(&self, name: &str) -> Result<&[T]> {
        match self.get(name)? {
            Arg::Tensors(t) => Ok(t),
            Arg::None => Ok(&[]),
            _ => Err(self.mismatch(name, "a tensor list")),
        }
    }

    /// A tensor or a scalar.
    pub fn tensor_or_scalar(&self, name: &str) -> Result<TensorOrScalar<'_, T>> {
        match self.get(name)? {
            Arg::Tensor(t) => Ok(TensorOrScalar::Tensor(t)),
            Arg::Int(i) => Ok(TensorOrScalar::Scalar(Scalar::Int(*i))),
            Arg::Float(x) => Ok(TensorOrScalar::Scalar(Scalar::Float(*x))),
            Arg::Bool(b) => Ok(TensorOrScalar::Scalar(Scalar::Bool(*b))),
            _ => Err(self.mismatch(name, "a tensor or scalar")),
        }
    }

    /// An optional int.
    pub fn opt_int(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::Int(i) => Ok(Some(*i)),
            _ => Err(self.mismatch(name, "an int")),
        }
    }

    /// A required int.
    pub fn int(&self, name: &str) -> Result<i64> {
        self.opt_int(name)?
            .ok_or_else(|| self.mismatch(name, "a required int"))
    }

    /// An optional float.
    pub fn opt_float(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::Float(x) => Ok(Some(*x)),
            Arg::Int(i) => Ok(Some(*i as f64)),
            _ => Err(self.mismatch(name, "a float")),
        }
    }

    /// A required float.
    pub fn float(&self, name: &str) -> Result<f64> {
        self.opt_float(name)?
            .ok_or_else(|| self.mismatch(name, "a required float"))
    }

    /// An optional scalar.
    pub fn opt_scalar(&self, name: &str) -> Result<Option<Scalar>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::Int(i) => Ok(Some(Scalar::Int(*i))),
            Arg::Float(x) => Ok(Some(Scalar::Float(*x))),
            Arg::Bool(b) => Ok(Some(Scalar::Bool(*b))),
            _ => Err(self.mismatch(name, "a scalar")),
        }
    }

    /// A required scalar.
    pub fn scalar(&self, name: &str) -> Result<Scalar> {
        self.opt_scalar(name)?
            .ok_or_else(|| self.mismatch(name, "a required scalar"))
    }

    /// An optional bool.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::Bool(b) => Ok(Some(*b)),
            _ => Err(self.mismatch(name, "a bool")),
        }
    }

    /// A required bool.
    pub fn bool(&self, name: &str) -> Result<bool> {
        self.opt_bool(name)?
            .ok_or_else(|| self.mismatch(name, "a required bool"))
    }

    /// An optional string.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::Str(s) => Ok(Some(s)),
            _ => Err(self.mismatch(name, "a string")),
        }
    }

    /// A required string.
    pub fn str(&self, name: &str) -> Result<&str> {
        self.opt_str(name)?
            .ok_or_else(|| self.mismatch(name, "a required string"))
    }

    /// An optional int list (a single int comes as a one-element list).
    pub fn opt_int_list(&self, name: &str) -> Result<Option<&[i64]>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::IntList(l) => Ok(Some(l)),
            _ => Err(self.mismatch(name, "an int list")),
        }
    }

    /// A required int list.
    pub fn int_list(&self, name: &str) -> Result<&[i64]> {
        self.opt_int_list(name)?
            .ok_or_else(|| self.mismatch(name, "a required int list"))
    }

    /// An int list of exactly `n` entries: a single value is repeated
    /// (`stride=2` → `[2, 2]`), any other length is a bad argument.
    pub fn int_list_n(&self, name: &str, n: usize) -> Result<Vec<i64>> {
        let l = self.int_list(name)?;
        match l.len() {
            1 => Ok(vec![l[0]; n]),
            k if k == n => Ok(l.to_vec()),
            k => Err(Error::bad_argument(format!(
                "{}(): '{name}' needs 1 or {n} values, got {k}; signature: {}",
                self.spec.name,
                self.spec.signature()
            ))),
        }
    }

    /// An int list or a string (`padding`): `Ok(Err(s))` for a string.
    pub fn int_list_or_str(&self, name: &str) -> Result<std::result::Result<&[i64], &str>> {
        match self.get(name)? {
            Arg::IntList(l) => Ok(Ok(l)),
            Arg::Str(s) => Ok(Err(s)),
            _ => Err(self.mismatch(name, "an int list or a string")),
        }
    }

    /// An int or an int list ([`ParamKind::IntOrIntList`]): `Ok(Ok(i))` for
    /// an int, `Ok(Err(list))` for a list.
    pub fn int_or_int_list(&self, name: &str) -> Result<std::result::Result<i64, &[i64]>> {
        match self.get(name)? {
            Arg::Int(i) => Ok(Ok(*i)),
            Arg::IntList(l) => Ok(Err(l)),
            _ => Err(self.mismatch(name, "an int or an int list")),
        }
    }

    /// An optional number or string ([`ParamKind::ScalarOrStr`]):
    /// `Some(Ok(number))` or `Some(Err(string))`.
    pub fn opt_scalar_or_str(
        &self,
        name: &str,
    ) -> Result<Option<std::result::Result<Scalar, &str>>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::Int(i) => Ok(Some(Ok(Scalar::Int(*i)))),
            Arg::Float(x) => Ok(Some(Ok(Scalar::Float(*x)))),
            Arg::Str(s) => Ok(Some(Err(s))),
            _ => Err(self.mismatch(name, "a number or a string")),
        }
    }

    /// An optional float list.
    pub fn opt_float_list(&self, name: &str) -> Result<Option<&[f64]>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::FloatList(l) => Ok(Some(l)),
            _ => Err(self.mismatch(name, "a float list")),
        }
    }

    /// An optional dtype.
    pub fn opt_dtype(&self, name: &str) -> Result<Option<DType>> {
        match self.get(name)? {
            Arg::None => Ok(None),
            Arg::DType(d) => Ok(Some(*d)),
            _ => Err(self.mismatch(name, "a dtype")),
        }
    }

    /// Every tensor argument, in parameter order.
    pub fn all_tensors(&self) -> impl Iterator<Item = &T> {
        self.values.iter().flat_map(|v| match v {
            Arg::Tensor(t) => std::slice::from_ref(t),
            Arg::Tensors(ts) => ts.as_slice(),
            _ => &[],
        })
    }

    /// Converts every tensor (host tensors to device tensors, say).
    pub fn try_map_tensors<U>(self, mut f: impl FnMut(T) -> Result<U>) -> Result<Args<U>> {
        let values = self
            .values
            .into_iter()
            .map(|v| {
                Ok(match v {
                    Arg::Tensor(t) => Arg::Tensor(f(t)?),
                    Arg::Tensors(ts) => {
                        Arg::Tensors(ts.into_iter().map(&mut f).collect::<Result<_>>()?)
                    }
                    Arg::None => Arg::None,
                    Arg::Int(i) => Arg::Int(i),
                    Arg::Float(x) => Arg::Float(x),
                    Arg::Bool(b) => Arg::Bool(b),
                    Arg::Str(s) => Arg::Str(s),
                    Arg::IntList(l) => Arg::IntList(l),
                    Arg::FloatList(l) => Arg::FloatList(l),
                    Arg::DType(d) => Arg::DType(d),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Args {
            spec: self.spec,
            values,
        })
    }
}

/// What a kernel or model returns.
#[derive(Debug)]
pub enum OpOutput<T> {
    /// One tensor: `"output"`.
    One(T),
    /// A tuple or list: `"0"`, `"1"`, ... .
    Tuple(Vec<T>),
    /// Named tensors (models returning dicts).
    Named(Vec<(String, T)>),
}

impl<T> OpOutput<T> {
    /// The results with their wire names.
    pub fn into_named(self) -> Vec<(String, T)> {
        match self {
            OpOutput::One(t) => vec![("output".to_owned(), t)],
            OpOutput::Tuple(ts) => ts
                .into_iter()
                .enumerate()
                .map(|(i, t)| (i.to_string(), t))
                .collect(),
            OpOutput::Named(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ADD: OpSpec = OpSpec {
        name: "add",
        category: "elementwise",
        doc: "input + alpha × other",
        params: &[
            Param::tensor("input"),
            Param::new("other", ParamKind::TensorOrScalar),
            Param::new("alpha", ParamKind::Scalar).or_int(1),
        ],
        outputs: Outputs::One,
        cost: Cost::Elementwise,
    };
    static CAT: OpSpec = OpSpec {
        name: "cat",
        category: "shape",
        doc: "concatenate",
        params: &[
            Param::new("tensors", ParamKind::TensorList),
            Param::new("dim", ParamKind::Int).or_int(0),
        ],
        outputs: Outputs::One,
        cost: Cost::Heavy,
    };
    static CONV: OpSpec = OpSpec {
        name: "conv2d",
        category: "nn",
        doc: "2-D convolution",
        params: &[
            Param::tensor("input"),
            Param::tensor("weight"),
            Param::tensor("bias").optional(),
            Param::new("stride", ParamKind::IntList).or_ints(&[1]),
            Param::new("padding", ParamKind::IntList).or_ints(&[0]),
        ],
        outputs: Outputs::One,
        cost: Cost::Heavy,
    };

    fn kw(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn signatures_render() {
        assert_eq!(
            ADD.signature(),
            "add(input: Tensor, other: Tensor | Scalar, alpha: Scalar = 1) -> Tensor"
        );
        assert_eq!(
            CONV.signature(),
            "conv2d(input: Tensor, weight: Tensor, bias: Tensor? = None, stride: int[] = [1], padding: int[] = [0]) -> Tensor"
        );
        for s in [&ADD, &CAT, &CONV] {
            s.validate().unwrap();
        }
    }

    #[test]
    fn linear_costs_bound_their_outputs_and_are_validated() {
        let bound = |spec: &OpSpec, shapes: &[&[usize]]| spec.output_bound(shapes.iter().copied());
        let m = Cost::MAX_ITEMSIZE;
        assert_eq!(bound(&ADD, &[&[10], &[]]), Some(10 * m));
        // [1, 300] by [200, 1]: 60,000 elements.
        assert_eq!(bound(&ADD, &[&[1, 300], &[200, 1]]), Some(60_000 * m));
        assert_eq!(bound(&ADD, &[&[2, 1, 5], &[7, 1]]), Some(70 * m));
        // Not broadcastable (prelu's per-channel weight): the largest input.
        assert_eq!(bound(&ADD, &[&[2, 3, 4], &[3]]), Some(24 * m));
        // A broadcast past u64 saturates: refused by any budget.
        let huge = 1usize << 40;
        assert_eq!(bound(&ADD, &[&[huge, 1], &[1, huge]]), Some(u64::MAX));
        assert_eq!(bound(&CAT, &[&[10]]), None, "heavy: no bound");
        static AMINMAX: OpSpec = OpSpec::new(
            "aminmax",
            "reduction",
            "minimum and maximum",
            &[Param::tensor("input")],
            Outputs::Tuple(&["min", "max"]),
        )
        .with_cost(Cost::Reduction);
        AMINMAX.validate().unwrap();
        assert_eq!(bound(&AMINMAX, &[&[3]]), Some(2 * 3 * m));
        assert_eq!(
            OpSpec::new("x", "c", "d", &[], Outputs::One).cost,
            Cost::Heavy
        );
        // The bound cannot hold for lists, in or out.
        const T: &[Param] = &[Param::tensor("input")];
        let lists_out = OpSpec::new("s", "c", "d", T, Outputs::List).with_cost(Cost::Elementwise);
        let e = lists_out.validate().unwrap_err();
        assert!(e.message.contains("not a list"), "{e}");
        let lists_in = OpSpec {
            cost: Cost::Reduction,
            ..CAT
        };
        let e = lists_in.validate().unwrap_err();
        assert!(e.message.contains("no tensor list"), "{e}");
        assert!(ADD.cost.is_linear() && !CAT.cost.is_linear());
        // Unary: one tensor in, one out.
        let neg = OpSpec::new("neg", "c", "d", T, Outputs::One);
        assert!(neg.is_unary());
        assert!(!ADD.is_unary() && !CAT.is_unary());
    }

    #[test]
    fn positional_named_and_scalar_binding() {
        let a = bind(&ADD, vec![("0".into(), 'a'), ("1".into(), 'b')], kw(&[])).unwrap();
        assert_eq!(a.tensor("input").unwrap(), &'a');
        assert_eq!(
            a.tensor_or_scalar("other").unwrap(),
            TensorOrScalar::Tensor(&'b')
        );
        assert_eq!(a.scalar("alpha").unwrap(), Scalar::Int(1));

        let a = bind(
            &ADD,
            vec![("input".into(), 'a')],
            kw(&[("other", Value::Float(2.0))]),
        )
        .unwrap();
        assert_eq!(
            a.tensor_or_scalar("other").unwrap(),
            TensorOrScalar::Scalar(Scalar::Float(2.0))
        );

        let c = bind(
            &CAT,
            vec![("1".into(), 'y'), ("0".into(), 'x'), ("2".into(), 'z')],
            kw(&[("dim", Value::Int(1))]),
        )
        .unwrap();
        assert_eq!(c.tensors("tensors").unwrap(), &['x', 'y', 'z']);
        assert_eq!(c.int("dim").unwrap(), 1);

        let v = bind(
            &CONV,
            vec![("0".into(), 'i'), ("weight".into(), 'w')],
            kw(&[("stride", Value::Int(2))]),
        )
        .unwrap();
        assert_eq!(v.opt_tensor("bias").unwrap(), None);
        assert_eq!(v.int_list_n("stride", 2).unwrap(), vec![2, 2]);
        assert_eq!(v.int_list_n("padding", 2).unwrap(), vec![0, 0]);
    }

    #[test]
    fn int_or_int_list_keeps_the_difference() {
        static SPLIT: OpSpec = OpSpec {
            name: "split",
            category: "shape",
            doc: "split",
            params: &[
                Param::tensor("tensor"),
                Param::new("split_size_or_sections", ParamKind::IntOrIntList),
            ],
            outputs: Outputs::List,
            cost: Cost::Heavy,
        };
        SPLIT.validate().unwrap();
        assert!(
            SPLIT
                .signature()
                .contains("split_size_or_sections: int | int[]")
        );
        let one = |v: Value| {
            bind(
                &SPLIT,
                vec![("0".into(), 't')],
                kw(&[("split_size_or_sections", v)]),
            )
        };
        let a = one(Value::Int(2)).unwrap();
        assert_eq!(a.int_or_int_list("split_size_or_sections").unwrap(), Ok(2));
        let a = one(Value::List(vec![Value::Int(2)])).unwrap();
        assert_eq!(
            a.int_or_int_list("split_size_or_sections").unwrap(),
            Err(&[2][..])
        );
        assert!(one(Value::Str("x".into())).is_err());
    }

    #[test]
    fn scalar_or_str_binds_both() {
        static NORM: OpSpec = OpSpec {
            name: "norm",
            category: "reduction",
            doc: "norm",
            params: &[
                Param::tensor("input"),
                Param::new("p", ParamKind::ScalarOrStr).or_str("fro"),
            ],
            outputs: Outputs::One,
            cost: Cost::Heavy,
        };
        NORM.validate().unwrap();
        assert!(
            NORM.signature().contains("p: Scalar | str = \"fro\""),
            "{}",
            NORM.signature()
        );
        let with = |kwargs| bind(&NORM, vec![("0".into(), 't')], kwargs).unwrap();
        assert_eq!(
            with(kw(&[])).opt_scalar_or_str("p").unwrap(),
            Some(Err("fro"))
        );
        assert_eq!(
            with(kw(&[("p", Value::Float(1.5))]))
                .opt_scalar_or_str("p")
                .unwrap(),
            Some(Ok(Scalar::Float(1.5)))
        );
        assert_eq!(
            with(kw(&[("p", Value::Int(1))]))
                .opt_scalar_or_str("p")
                .unwrap(),
            Some(Ok(Scalar::Int(1)))
        );
        assert!(
            bind(
                &NORM,
                vec![("0".into(), 't')],
                kw(&[("p", Value::Bool(true))])
            )
            .is_err()
        );
    }

    #[test]
    fn binding_errors_name_the_signature() {
        type Case = (Vec<(String, char)>, BTreeMap<String, Value>, &'static str);
        let cases: Vec<Case> = vec![
            (
                vec![("0".into(), 'a')],
                kw(&[]),
                "missing required argument 'other'",
            ),
            (
                vec![("0".into(), 'a'), ("2".into(), 'b')],
                kw(&[]),
                "without gaps",
            ),
            (
                vec![("0".into(), 'a'), ("1".into(), 'b'), ("2".into(), 'c')],
                kw(&[]),
                "at most 2 positional",
            ),
            (
                vec![("0".into(), 'a'), ("1".into(), 'b')],
                kw(&[("alpha", Value::Str("x".into()))]),
                "must be Scalar, not str",
            ),
            (
                vec![("0".into(), 'a'), ("1".into(), 'b')],
                kw(&[("beta", Value::Int(1))]),
                "unexpected keyword argument 'beta'",
            ),
            (
                vec![("0".into(), 'a'), ("input".into(), 'b')],
                kw(&[]),
                "multiple values for argument 'input'",
            ),
            (
                vec![("0".into(), 'a'), ("alpha".into(), 'b')],
                kw(&[]),
                "pass it as a keyword argument",
            ),
            (
                vec![("0".into(), 'a')],
                kw(&[("other", Value::None)]),
                "not None",
            ),
        ];
        for (inputs, kwargs, want) in cases {
            let e = bind(&ADD, inputs, kwargs).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadArgument);
            assert!(
                e.message.contains(want),
                "{} does not contain {want}",
                e.message
            );
            assert!(
                e.message.contains("signature: add(input: Tensor"),
                "{}",
                e.message
            );
        }
        let e = bind(
            &CONV,
            vec![("0".into(), 'i'), ("1".into(), 'w')],
            kw(&[(
                "stride",
                Value::List(vec![Value::Int(1), Value::Float(1.5)]),
            )]),
        )
        .unwrap_err();
        assert!(e.message.contains("must be int[]"), "{}", e.message);
    }

    #[test]
    fn unknown_op_suggests() {
        static E: OpEntry = OpEntry::new(ADD, &());
        let mut r = OpRegistry::new();
        r.register(&E).unwrap();
        assert!(r.register(&E).is_err());
        let e = r.lookup("ad").unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownOp);
        assert!(e.message.contains("did you mean add"), "{}", e.message);
    }

    #[test]
    fn a_huge_unknown_name_is_answered_at_once_and_not_echoed() {
        // 16 MiB: an edit distance against every op would take minutes.
        static E: OpEntry = OpEntry::new(ADD, &());
        let mut r = OpRegistry::new();
        r.register(&E).unwrap();
        let name = "ad".repeat(8 << 20);
        let started = std::time::Instant::now();
        let e = r.lookup(&name).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(e.code, ErrorCode::UnknownOp);
        assert!(e.message.len() < 200, "{} bytes", e.message.len());
    }
}
