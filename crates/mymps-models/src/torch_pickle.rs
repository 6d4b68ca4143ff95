//! Reading `torch.save(state_dict)` files (the zip format of PyTorch ≥ 1.6)
//! without Python: a small unpickler for the subset of pickle that
//! `torch.save` writes for a dict of tensors.
//!
//! libtorch's own C++ unpickler (`torch::pickle_load`) turns
//! `collections.OrderedDict` — what every `state_dict()` is — into `None`,
//! so it cannot read these files.
//!
//! Layout: `<archive>/data.pkl` is a protocol-2 pickle whose tensors are
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
//! calls; each storage is a persistent id `('storage', torch.XStorage, key,
//! location, numel)` whose bytes are the zip entry `<archive>/data/<key>`.
//! Anything outside that subset is refused with a clear error, never
//! executed.
//!
//! # A hostile file costs what its size allows
//!
//! Model files are not trusted: every size and count that a file states is
//! checked against what the file really holds before anything is
//! allocated for it, since a failed allocation aborts a Rust process and a
//! stack overflow cannot be caught.
//!
//! - Unpickled objects live in one arena and refer to each other by index,
//!   so that a memo get (`BINGET`) is a copy of an index, not of the value
//!   (a "billion laughs" pickle stays as small as its bytes), values may
//!   nest or refer to themselves without any code recursing over them
//!   (parsing, dropping and error messages, which quote [`DESCRIBE_DEPTH`]
//!   levels, are all bounded), and dropping the arena is flat. What
//!   unpickling allocates is counted, and refused past
//!   [`MEMORY_PER_PICKLE_BYTE`] times the pickle's size (plus
//!   [`MEMORY_BASE`]).
//! - Zip entries must be stored (torch.save does not compress), their
//!   declared sizes must lie inside the file, `data.pkl` is at most
//!   [`MAX_PICKLE_BYTES`], a storage's numel × item size must fit the file
//!   and its entry must hold at least that (only that is read), and bytes
//!   are read with a bounded `take` into a buffer reserved with
//!   `try_reserve` (the CRC of a whole entry is still checked).
//! - Each tensor view must lie inside its storage (checked arithmetic), and
//!   the tensors together may not exceed [`MAX_VIEW_FACTOR`] times the
//!   file's size (views that overlap, such as stride 0, or that repeat one
//!   storage would otherwise multiply it). All of this is checked before any
//!   storage is read.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{Read, Seek, SeekFrom};

use tch::{Kind, Tensor};
use zip::CompressionMethod;

use crate::convert::clip;

type R<T> = std::result::Result<T, String>;

/// The largest `data.pkl` read (16 MiB: a state_dict's pickle takes 100 to
/// 200 bytes a tensor).
pub(crate) const MAX_PICKLE_BYTES: u64 = 16 << 20;

/// What unpickling may allocate (as counted, roughly), per byte of the
/// pickle, on top of [`MEMORY_BASE`]: the state_dicts of torch and
/// transformers modules take 9 to 13.
pub(crate) const MEMORY_PER_PICKLE_BYTE: usize = 32;

/// What unpickling may allocate whatever the pickle's size (1 MiB).
pub(crate) const MEMORY_BASE: usize = 1 << 20;

/// The tensors of a file may add up to this many times its size (tied
/// weights view one storage twice).
pub(crate) const MAX_VIEW_FACTOR: u64 = 4;

/// The most dimensions a tensor may have.
pub(crate) const MAX_DIMS: usize = 64;

/// How many levels of a value an error message quotes.
pub(crate) const DESCRIBE_DEPTH: usize = 3;

/// How many items of a container, or characters of a string, an error
/// message quotes.
const DESCRIBE_WIDTH: usize = 4;
const DESCRIBE_CHARS: usize = 48;

/// A pickled value: a scalar, or an object of the arena by index. Copying
/// one never copies an object.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(usize),
}

/// An object of the arena.
/// (Boxed payloads keep it at 32 bytes: unpickling's memory is counted.)
enum Obj {
    Str(Box<str>),
    /// A `GLOBAL`: module and name.
    Global(Box<(String, String)>),
    Tuple(Vec<Val>),
    List(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    /// A persistent id: a storage.
    Storage {
        kind: Kind,
        /// The object (a string) that names its zip entry `data/<key>`.
        key: usize,
        numel: i64,
    },
    /// A tensor to rebuild.
    Tensor(Box<View>),
    /// Something opaque (backward hooks, metadata objects): kept only so
    /// that the stack stays consistent.
    Opaque,
}

const _: () = assert!(std::mem::size_of::<Obj>() <= 32);

/// A tensor's view of its storage.
struct View {
    /// The object (an [`Obj::Storage`]).
    storage: usize,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl Obj {
    /// Its heap bytes, for the memory count.
    fn heap(&self) -> usize {
        const V: usize = std::mem::size_of::<Val>();
        match self {
            Obj::Str(s) => s.len(),
            Obj::Global(g) => std::mem::size_of::<(String, String)>() + g.0.len() + g.1.len(),
            Obj::Tuple(v) | Obj::List(v) => v.len() * V,
            Obj::Dict(v) => v.len() * 2 * V,
            Obj::Tensor(v) => std::mem::size_of::<View>() + (v.size.len() + v.stride.len()) * 8,
            Obj::Storage { .. } | Obj::Opaque => 0,
        }
    }
}

fn storage_kind(name: &str) -> R<Kind> {
    Ok(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        other => return Err(format!("unsupported storage type torch.{other}")),
    })
}

/// The values of an unpickled file: the arena.
struct Objects {
    objs: Vec<Obj>,
}

impl Objects {
    fn get(&self, v: Val) -> Option<&Obj> {
        match v {
            Val::Obj(i) => self.objs.get(i),
            _ => None,
        }
    }

    fn str(&self, v: Val) -> Option<&str> {
        match self.get(v) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A few levels of `v`, for error messages: never more than
    /// [`DESCRIBE_DEPTH`] levels of [`DESCRIBE_WIDTH`] items, whatever
    /// `v` holds (values may nest deeply or contain themselves).
    fn describe(&self, v: Val) -> String {
        let mut out = String::new();
        self.describe_into(v, DESCRIBE_DEPTH, &mut out);
        out
    }

    fn describe_into(&self, v: Val, depth: usize, out: &mut String) {
        use std::fmt::Write;
        let obj = match v {
            Val::None => return out.push_str("None"),
            Val::Bool(b) => return out.push_str(if b { "True" } else { "False" }),
            Val::Int(i) => return write!(out, "{i}").expect("a string"),
            Val::Float(f) => return write!(out, "{f:?}").expect("a string"),
            Val::Obj(i) => &self.objs[i],
        };
        let seq = |items: &mut dyn Iterator<Item = Val>,
                   len: usize,
                   (open, close): (&str, &str),
                   out: &mut String| {
            out.push_str(open);
            if depth == 0 {
                out.push('…');
            } else {
                for (n, item) in items.take(DESCRIBE_WIDTH).enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    self.describe_into(item, depth - 1, out);
                }
                if len > DESCRIBE_WIDTH {
                    write!(out, ", … ({len} items)").expect("a string");
                }
            }
            out.push_str(close);
        };
        match obj {
            Obj::Str(s) => {
                let short: String = s.chars().take(DESCRIBE_CHARS).collect();
                let more = if short.len() < s.len() { "…" } else { "" };
                write!(out, "{short:?}{more}").expect("a string");
            }
            Obj::Global(g) => {
                let g: String = format!("{}.{}", g.0, g.1)
                    .chars()
                    .take(DESCRIBE_CHARS)
                    .collect();
                out.push_str(&g);
            }
            Obj::Tuple(v) => seq(&mut v.iter().copied(), v.len(), ("(", ")"), out),
            Obj::List(v) => seq(&mut v.iter().copied(), v.len(), ("[", "]"), out),
            Obj::Dict(v) => seq(
                &mut v.iter().flat_map(|&(k, v)| [k, v]),
                v.len() * 2,
                ("{", "}"),
                out,
            ),
            Obj::Storage { .. } => out.push_str("a storage"),
            Obj::Tensor(_) => out.push_str("a tensor"),
            Obj::Opaque => out.push_str("an object"),
        }
    }

    /// The storage of a view: key, kind, numel.
    fn storage(&self, view: &View) -> (&str, Kind, i64) {
        let Obj::Storage { kind, key, numel } = self.objs[view.storage] else {
            unreachable!("a view's storage is checked when the view is built");
        };
        let key = self.str(Val::Obj(key)).expect("checked when built");
        (key, kind, numel)
    }

    /// The ints of a tuple or list.
    fn ints(&self, v: Val) -> R<Vec<i64>> {
        match self.get(v) {
            Some(Obj::Tuple(items) | Obj::List(items)) => {
                if items.len() > MAX_DIMS {
                    return Err(format!(
                        "a tensor has {} dimensions, more than {MAX_DIMS}",
                        items.len()
                    ));
                }
                items
                    .iter()
                    .map(|&x| match x {
                        Val::Int(i) => Ok(i),
                        other => Err(format!("expected an int, found {}", self.describe(other))),
                    })
                    .collect()
            }
            _ => Err(format!(
                "expected a tuple of ints, found {}",
                self.describe(v)
            )),
        }
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    /// Where each open MARK began on the stack; what lies below the last
    /// one cannot be popped until it is closed (as in Python's pickle).
    marks: Vec<usize>,
    memo: HashMap<u32, Val>,
    objects: Objects,
    /// Bytes allocated so far (approximately) and the most allowed.
    used: usize,
    budget: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Unpickler<'a> {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objects: Objects { objs: Vec::new() },
            used: 0,
            budget: data
                .len()
                .saturating_mul(MEMORY_PER_PICKLE_BYTE)
                .saturating_add(MEMORY_BASE),
        }
    }

    /// Counts `bytes` more of memory; an error past the budget.
    fn charge(&mut self, bytes: usize) -> R<()> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.budget {
            return Err(format!(
                "unpickling would take more than {} bytes of memory ({MEMORY_PER_PICKLE_BYTE} per byte of the {}-byte pickle, plus {MEMORY_BASE}); refused",
                self.budget,
                self.data.len()
            ));
        }
        Ok(())
    }

    fn push(&mut self, v: Val) -> R<()> {
        self.charge(std::mem::size_of::<Val>())?;
        self.stack.push(v);
        Ok(())
    }

    /// Puts `obj` in the arena; its value.
    fn alloc(&mut self, obj: Obj) -> R<Val> {
        self.charge(std::mem::size_of::<Obj>() + obj.heap())?;
        self.objects.objs.push(obj);
        Ok(Val::Obj(self.objects.objs.len() - 1))
    }

    fn push_obj(&mut self, obj: Obj) -> R<()> {
        let v = self.alloc(obj)?;
        self.push(v)
    }

    fn byte(&mut self) -> R<u8> {
        let b = *self.data.get(self.pos).ok_or("truncated pickle")?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or("truncated pickle")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    /// The stack's bottom for pops: the last open MARK.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> R<Val> {
        if self.stack.len() <= self.floor() {
            return Err("pickle stack underflow".into());
        }
        Ok(self.stack.pop().expect("above the floor"))
    }

    fn top(&self) -> R<Val> {
        if self.stack.len() <= self.floor() {
            return Err("pickle stack underflow".into());
        }
        Ok(*self.stack.last().expect("above the floor"))
    }

    /// The items above the last MARK, which is closed.
    fn pop_mark(&mut self) -> R<Vec<Val>> {
        let at = self.marks.pop().ok_or("pickle MARK missing")?;
        Ok(self.stack.split_off(at))
    }

    fn pairs(items: &[Val]) -> R<Vec<(Val, Val)>> {
        if items.len() % 2 != 0 {
            return Err("a pickled dict has an odd number of items".into());
        }
        Ok(items.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    fn memo_get(&mut self, i: u32) -> R<()> {
        let v = *self.memo.get(&i).ok_or("pickle memo miss")?;
        self.push(v)
    }

    fn memo_put(&mut self, i: u32) -> R<()> {
        let v = self.top()?;
        if let Entry::Vacant(e) = self.memo.entry(i) {
            e.insert(v);
            self.charge(32)?;
        } else {
            self.memo.insert(i, v);
        }
        Ok(())
    }

    /// `APPEND`/`APPENDS` onto the list below.
    fn extend_list(&mut self, items: Vec<Val>) -> R<()> {
        self.charge(items.len() * std::mem::size_of::<Val>())?;
        let target = self.top()?;
        match target {
            Val::Obj(i) => match &mut self.objects.objs[i] {
                Obj::List(l) => l.extend(items),
                Obj::Opaque => {}
                _ => {
                    return Err(format!(
                        "the pickle appends to {}, not a list",
                        self.objects.describe(target)
                    ));
                }
            },
            other => {
                return Err(format!(
                    "the pickle appends to {}, not a list",
                    self.objects.describe(other)
                ));
            }
        }
        Ok(())
    }

    /// `SETITEM`/`SETITEMS` onto the dict below.
    fn extend_dict(&mut self, pairs: Vec<(Val, Val)>) -> R<()> {
        self.charge(pairs.len() * 2 * std::mem::size_of::<Val>())?;
        let target = self.top()?;
        match target {
            Val::Obj(i) => match &mut self.objects.objs[i] {
                Obj::Dict(d) => d.extend(pairs),
                Obj::Opaque => {}
                _ => {
                    return Err(format!(
                        "the pickle sets items of {}, not a dict",
                        self.objects.describe(target)
                    ));
                }
            },
            other => {
                return Err(format!(
                    "the pickle sets items of {}, not a dict",
                    self.objects.describe(other)
                ));
            }
        }
        Ok(())
    }

    /// `REDUCE`: the few calls a state_dict makes, as values; any other
    /// call is refused (nothing is ever called).
    fn reduce(&mut self, func: Val, args: Val) -> R<Val> {
        let o = &self.objects;
        let Some(Obj::Global(g)) = o.get(func) else {
            return Err(format!("cannot call {}", o.describe(func)));
        };
        let (module, name) = &**g;
        let Some(Obj::Tuple(args_v)) = o.get(args) else {
            return Err(format!("call arguments are {}", o.describe(args)));
        };
        let obj = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Obj::Dict(Vec::new()),
            ("torch._utils", "_rebuild_tensor_v2") => {
                let &[storage, offset, size, stride, ..] = args_v.as_slice() else {
                    return Err("_rebuild_tensor_v2 with too few arguments".into());
                };
                let storage = match (storage, o.get(storage)) {
                    (Val::Obj(i), Some(Obj::Storage { .. })) => i,
                    _ => return Err(format!("tensor storage is {}", o.describe(storage))),
                };
                let Val::Int(offset) = offset else {
                    return Err(format!("tensor offset is {}", o.describe(offset)));
                };
                Obj::Tensor(Box::new(View {
                    storage,
                    offset,
                    size: o.ints(size).map_err(|e| format!("tensor size: {e}"))?,
                    stride: o.ints(stride).map_err(|e| format!("tensor stride: {e}"))?,
                }))
            }
            // A parameter is its tensor.
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => {
                return match args_v.first() {
                    Some(&t) if matches!(o.get(t), Some(Obj::Tensor(_))) => Ok(t),
                    _ => Err("_rebuild_parameter without a tensor".into()),
                };
            }
            // Hook dicts and the like: values that a state_dict carries but
            // that do not matter for the weights.
            ("torch._tensor", _) | ("torch", "device") | ("builtins", "set") => Obj::Opaque,
            (m, n) => {
                return Err(format!(
                    "the file calls {m}.{n}, which a state_dict does not need; refused"
                ));
            }
        };
        self.alloc(obj)
    }

    /// `BINPERSID`: a storage, `('storage', torch.XStorage, key, location,
    /// numel)`.
    fn persistent_id(&mut self, pid: Val) -> R<Val> {
        let o = &self.objects;
        let bad = || format!("persistent id {}", o.describe(pid));
        let Some(Obj::Tuple(items)) = o.get(pid) else {
            return Err(bad());
        };
        let &[
            tag,
            class,
            key @ Val::Obj(key_id),
            _location,
            Val::Int(numel),
            ..,
        ] = items.as_slice()
        else {
            return Err(bad());
        };
        if o.str(tag) != Some("storage") || o.str(key).is_none() {
            return Err(bad());
        }
        let Some(Obj::Global(g)) = o.get(class) else {
            return Err(format!("storage type {}", o.describe(class)));
        };
        let storage = Obj::Storage {
            kind: storage_kind(&g.1)?,
            key: key_id,
            numel,
        };
        self.alloc(storage)
    }

    fn run(&mut self) -> R<Val> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => {
                    self.byte()?; // PROTO n
                }
                b'.' => return self.pop(),
                b'(' => {
                    self.charge(std::mem::size_of::<usize>())?;
                    self.marks.push(self.stack.len());
                }
                b'N' => self.push(Val::None)?,
                0x88 => self.push(Val::Bool(true))?,
                0x89 => self.push(Val::Bool(false))?,
                b'K' => {
                    let v = self.byte()? as i64;
                    self.push(Val::Int(v))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64;
                    self.push(Val::Int(v))?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4")) as i64;
                    self.push(Val::Int(v))?;
                }
                0x8a => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("integer wider than 64 bits".into());
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Val::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8"));
                    self.push(Val::Float(v))?;
                }
                b'X' | b'T' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push_obj(Obj::Str(s.into()))?;
                }
                0x8c | b'U' => {
                    let n = self.byte()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push_obj(Obj::Str(s.into()))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_obj(Obj::Global(Box::new((module, name))))?;
                }
                b'q' => {
                    let i = self.byte()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.byte()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b')' => self.push_obj(Obj::Tuple(Vec::new()))?,
                b']' => self.push_obj(Obj::List(Vec::new()))?,
                b'}' => self.push_obj(Obj::Dict(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Obj::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < self.floor() + n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_obj(Obj::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Obj::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = Self::pairs(&items)?;
                    self.push_obj(Obj::Dict(pairs))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = Self::pairs(&items)?;
                    self.extend_dict(pairs)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD: object state (a state_dict's `_metadata`); not needed.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_id(pid)?;
                    self.push(v)?;
                }
                other => {
                    return Err(format!(
                        "pickle opcode {other:#04x} is not supported in a state_dict"
                    ));
                }
            }
        }
    }
}

/// Unpickles `data`: the root value and the arena it refers to.
fn unpickle(data: &[u8]) -> R<(Val, Objects)> {
    let mut u = Unpickler::new(data);
    let root = u.run()?;
    Ok((root, u.objects))
}

/// How much of a zip entry to read.
enum Span<'a> {
    /// All of it, which may be at most `max` bytes (`what` says why).
    Whole { max: u64, what: &'a str },
    /// Its first `n` bytes (a storage's numel × item size), which it must
    /// have.
    Prefix(u64),
}

/// A zip entry's bytes. It must be stored (not compressed) and its
/// declared size must lie inside the file and fit `span`; it is read with
/// a bounded `take` into a buffer reserved with `try_reserve`.
fn read_entry<Rd: Read + Seek>(
    zip: &mut zip::ZipArchive<Rd>,
    name: &str,
    file_len: u64,
    span: Span,
) -> R<Vec<u8>> {
    let shown = clip(name);
    let mut f = zip.by_name(name).map_err(|e| format!("{shown}: {e}"))?;
    if f.compression() != CompressionMethod::Stored {
        return Err(format!(
            "{shown} is compressed ({}); torch.save stores its entries uncompressed",
            f.compression()
        ));
    }
    let size = f.size();
    if size != f.compressed_size() {
        return Err(format!(
            "{shown} declares {size} bytes but stores {}",
            f.compressed_size()
        ));
    }
    if f.data_start()
        .checked_add(size)
        .is_none_or(|e| e > file_len)
    {
        return Err(format!(
            "{shown} declares {size} bytes, past the end of the {file_len}-byte file"
        ));
    }
    let n = match span {
        Span::Whole { max, what } if size > max => {
            return Err(format!(
                "{shown} declares {size} bytes, more than {max} ({what})"
            ));
        }
        Span::Whole { .. } => size,
        Span::Prefix(n) if size < n => {
            return Err(format!(
                "{shown} has {size} bytes, fewer than the {n} its numel × item size needs"
            ));
        }
        Span::Prefix(n) => n,
    };
    let len = usize::try_from(n).map_err(|_| format!("{shown}: {n} bytes"))?;
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|e| format!("{shown}: cannot reserve {n} bytes ({e})"))?;
    // One byte more than a whole entry has: the reader then reaches its
    // end, where the zip crate checks the CRC.
    let limit = if n == size { n.saturating_add(1) } else { n };
    (&mut f)
        .take(limit)
        .read_to_end(&mut v)
        .map_err(|e| format!("{shown}: {e}"))?;
    if v.len() != len {
        return Err(format!(
            "{shown} holds {} bytes, not the {size} it declares",
            v.len()
        ));
    }
    Ok(v)
}

/// The bytes of `view` into a storage of `numel` items of `item` bytes, if
/// it lies inside it (checked arithmetic).
fn view_bytes(view: &View, numel: i64, item: usize) -> R<u64> {
    let View {
        offset,
        size,
        stride,
        ..
    } = view;
    let offset = *offset;
    if size.len() != stride.len() {
        return Err(format!(
            "size {size:?} and stride {stride:?} have different lengths"
        ));
    }
    if offset < 0 || size.iter().chain(stride).any(|&x| x < 0) {
        return Err(format!(
            "negative offset, size or stride ({offset}, {size:?}, {stride:?})"
        ));
    }
    let overflow = || format!("size {size:?} with stride {stride:?} overflows");
    let count = size
        .iter()
        .try_fold(1i64, |a, &s| a.checked_mul(s))
        .ok_or_else(overflow)?;
    if offset > numel {
        return Err(format!(
            "offset {offset} is past the end of its storage ({numel} items)"
        ));
    }
    if count > 0 {
        let last = size
            .iter()
            .zip(stride)
            .try_fold(offset, |a, (&s, &t)| a.checked_add((s - 1).checked_mul(t)?))
            .ok_or_else(overflow)?;
        if last >= numel {
            return Err(format!(
                "size {size:?}, stride {stride:?} from offset {offset} reach item {last} of a storage of {numel}"
            ));
        }
    }
    (count as u64).checked_mul(item as u64).ok_or_else(overflow)
}

/// A state_dict entry, checked: a view of one storage.
#[derive(Debug)]
pub(crate) struct Item {
    /// The state_dict key.
    pub name: String,
    /// The key of its storage in [`Contents::storages`].
    pub storage: String,
    /// Offset, size and stride, in items, inside the storage.
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// What a `torch.save(state_dict)` file holds, checked, before any tensor
/// is made of it (nothing here calls into libtorch).
#[derive(Debug)]
pub(crate) struct Contents {
    /// The entries, in the file's order.
    pub entries: Vec<Item>,
    /// Each storage's kind and bytes (numel × item size), by key.
    pub storages: HashMap<String, (Kind, Vec<u8>)>,
}

/// The entries of the state_dict at `root`, checked against each other
/// and against a file of `file_len` bytes (names, views inside their
/// storages, the views' total, storages that fit the file), before any
/// storage is read.
fn plan(objects: &Objects, root: Val, file_len: u64) -> R<Vec<(&str, &View)>> {
    let Some(Obj::Dict(entries)) = objects.get(root) else {
        return Err(format!(
            "the file does not hold a dict but {} (save model.state_dict(), not the model)",
            objects.describe(root)
        ));
    };
    let mut plans: Vec<(&str, &View)> = Vec::new();
    plans
        .try_reserve_exact(entries.len())
        .map_err(|e| e.to_string())?;
    // Each storage by key: its kind and numel, which every view agrees on.
    let mut storages: HashMap<&str, (Kind, i64)> = HashMap::new();
    let budget = file_len.saturating_mul(MAX_VIEW_FACTOR);
    let mut total = 0u64;
    for &(k, v) in entries {
        let name = objects
            .str(k)
            .ok_or_else(|| format!("a state_dict key is {}, not a string", objects.describe(k)))?;
        let shown = clip(name);
        let Some(Obj::Tensor(view)) = objects.get(v) else {
            return Err(format!(
                "state_dict entry '{shown}' is not a tensor but {}",
                objects.describe(v)
            ));
        };
        let (key, kind, numel) = objects.storage(view);
        let key_s = clip(key);
        match storages.entry(key) {
            Entry::Vacant(e) => {
                e.insert((kind, numel));
            }
            Entry::Occupied(e) if *e.get() != (kind, numel) => {
                return Err(format!(
                    "storage {key_s} is {numel} items of {kind:?} for '{shown}' but {} items of {:?} for another entry",
                    e.get().1,
                    e.get().0
                ));
            }
            Entry::Occupied(_) => {}
        }
        if numel < 0 {
            return Err(format!("storage {key_s} has {numel} items"));
        }
        let bytes = view_bytes(view, numel, kind.elt_size_in_bytes())
            .map_err(|e| format!("state_dict entry '{shown}': {e}"))?;
        total = total.saturating_add(bytes);
        if total > budget {
            return Err(format!(
                "state_dict entry '{shown}' takes the tensors to {total} bytes, more than {MAX_VIEW_FACTOR} × the file's {file_len} (views that overlap or repeat their storage)"
            ));
        }
        plans.push((name, view));
    }
    // Each storage's entry must hold exactly its numel × item size, which
    // the file must be able to hold.
    for (&key, &(kind, numel)) in &storages {
        let key_s = clip(key);
        (numel as u64)
            .checked_mul(kind.elt_size_in_bytes() as u64)
            .filter(|&b| b <= file_len)
            .ok_or_else(|| {
                format!(
                    "storage {key_s} has {numel} items of {kind:?}, more than the {file_len}-byte file holds"
                )
            })?;
    }
    Ok(plans)
}

/// Unpickles `pickle` and checks its state_dict as [`read_contents`] does
/// for a file of `file_len` bytes: the number of entries. For the fuzz
/// target of the unpickler, which a zip around the pickle (its CRC) would
/// keep from the pickle's bytes.
pub(crate) fn check_pickle(pickle: &[u8], file_len: u64) -> R<usize> {
    let (root, objects) = unpickle(pickle)?;
    Ok(plan(&objects, root, file_len)?.len())
}

/// Reads a `torch.save(state_dict)` file's entries and storages, checked
/// (see the module's doc), without making tensors of them. Nothing is
/// allocated for a size that the file states before it is checked against
/// the file's real size.
pub(crate) fn read_contents<Rd: Read + Seek>(mut file: Rd) -> R<Contents> {
    let file_len = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    file.rewind().map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        format!("not a torch.save zip file ({e}); legacy (pre-1.6) files are not supported")
    })?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or("no data.pkl in the archive")?
        .to_owned();
    let prefix = pkl.trim_end_matches("data.pkl").to_owned();
    let order_name = format!("{prefix}byteorder");
    if zip.index_for_name(&order_name).is_some() {
        let order = read_entry(
            &mut zip,
            &order_name,
            file_len,
            Span::Whole {
                max: 16,
                what: "a byte order",
            },
        )?;
        if order != b"little" {
            return Err(format!(
                "byte order {} is not supported",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let pickle = read_entry(
        &mut zip,
        &pkl,
        file_len,
        Span::Whole {
            max: MAX_PICKLE_BYTES,
            what: "the most a state_dict's pickle may have",
        },
    )?;
    let (root, objects) = unpickle(&pickle)?;
    drop(pickle);
    // Every entry, checked (names, views, sizes) before any storage is read.
    let plan = plan(&objects, root, file_len)?;

    // Storages in the order the entries first use them.
    let mut storages = HashMap::new();
    let mut entries = Vec::new();
    entries
        .try_reserve_exact(plan.len())
        .map_err(|e| e.to_string())?;
    for (name, view) in plan {
        let (key, kind, numel) = objects.storage(view);
        if !storages.contains_key(key) {
            let entry = format!("{prefix}data/{key}");
            let want = numel as u64 * kind.elt_size_in_bytes() as u64;
            let bytes = read_entry(&mut zip, &entry, file_len, Span::Prefix(want))
                .map_err(|e| format!("storage {}: {e}", clip(key)))?;
            storages.insert(key.to_owned(), (kind, bytes));
        }
        entries.push(Item {
            name: name.to_owned(),
            storage: key.to_owned(),
            offset: view.offset,
            size: view.size.clone(),
            stride: view.stride.clone(),
        });
    }
    Ok(Contents { entries, storages })
}

/// Reads a `torch.save(state_dict)` file into (name, tensor) pairs, in the
/// file's order, on the CPU ([`read_contents`], then one tensor per
/// storage and a copy of each entry's view of it).
pub fn read_state_dict<Rd: Read + Seek>(file: Rd) -> R<Vec<(String, Tensor)>> {
    let Contents { entries, storages } = read_contents(file)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (key, (kind, bytes)) in storages {
        let numel = (bytes.len() / kind.elt_size_in_bytes()) as i64;
        // f_from_data_size copies numel × item size bytes: exactly `bytes`.
        let t = Tensor::f_from_data_size(&bytes, &[numel], kind).map_err(|e| e.to_string())?;
        tensors.insert(key, t);
    }
    let mut out = Vec::new();
    out.try_reserve_exact(entries.len())
        .map_err(|e| e.to_string())?;
    for e in entries {
        let t = tensors[&e.storage]
            .f_as_strided(&e.size, &e.stride, Some(e.offset))
            .and_then(|t| t.f_contiguous())
            .map_err(|err| format!("state_dict entry '{}': {err}", clip(&e.name)))?;
        out.push((e.name, t));
    }
    Ok(out)
}
