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

use std::collections::HashMap;
use std::io::Read;

use tch::{Kind, Tensor};

type R<T> = std::result::Result<T, String>;

/// A pickled value, as far as state_dicts need. (Some payloads are only
/// read through `Debug`, in error messages.)
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Val>),
    List(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    Global(String, String),
    /// A persistent id: a storage (kind, zip key).
    Storage(Kind, String),
    /// A tensor to rebuild: storage, offset, size, stride.
    Tensor {
        kind: Kind,
        key: String,
        offset: i64,
        size: Vec<i64>,
        stride: Vec<i64>,
    },
    /// Something opaque (backward hooks, metadata objects): kept only so
    /// that the stack stays consistent.
    Opaque,
    Mark,
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

fn ints(v: &Val) -> R<Vec<i64>> {
    match v {
        Val::Tuple(items) | Val::List(items) => items
            .iter()
            .map(|x| match x {
                Val::Int(i) => Ok(*i),
                other => Err(format!("expected an int, found {other:?}")),
            })
            .collect(),
        other => Err(format!("expected a tuple of ints, found {other:?}")),
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    memo: HashMap<u32, Val>,
}

impl<'a> Unpickler<'a> {
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

    fn pop(&mut self) -> R<Val> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_owned())
    }

    fn pop_mark(&mut self) -> R<Vec<Val>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Val::Mark))
            .ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> R<&mut Val> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow".to_owned())
    }

    fn reduce(&mut self, func: Val, args: Val) -> R<Val> {
        let Val::Global(module, name) = func else {
            return Err(format!("cannot call {func:?}"));
        };
        let args = match args {
            Val::Tuple(a) => a,
            other => return Err(format!("call arguments are {other:?}")),
        };
        Ok(match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Val::Dict(Vec::new()),
            ("torch._utils", "_rebuild_tensor_v2") => {
                let [storage, offset, size, stride, ..] = args.as_slice() else {
                    return Err("_rebuild_tensor_v2 with too few arguments".into());
                };
                let Val::Storage(kind, key) = storage else {
                    return Err(format!("tensor storage is {storage:?}"));
                };
                let Val::Int(offset) = offset else {
                    return Err("tensor offset is not an int".into());
                };
                Val::Tensor {
                    kind: *kind,
                    key: key.clone(),
                    offset: *offset,
                    size: ints(size)?,
                    stride: ints(stride)?,
                }
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => args
                .into_iter()
                .next()
                .ok_or("_rebuild_parameter without a tensor")?,
            // Hook dicts and the like: values that a state_dict carries but
            // that do not matter for the weights.
            ("torch._tensor", _) | ("torch", "device") | ("builtins", "set") => Val::Opaque,
            (m, n) => {
                return Err(format!(
                    "the file calls {m}.{n}, which a state_dict does not need; refused"
                ));
            }
        })
    }

    fn run(mut self) -> R<Val> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => {
                    self.byte()?; // PROTO n
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Val::Mark),
                b'N' => self.stack.push(Val::None),
                0x88 => self.stack.push(Val::Bool(true)),
                0x89 => self.stack.push(Val::Bool(false)),
                b'K' => {
                    let v = self.byte()? as i64;
                    self.stack.push(Val::Int(v));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64;
                    self.stack.push(Val::Int(v));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4")) as i64;
                    self.stack.push(Val::Int(v));
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
                    self.stack.push(Val::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8"));
                    self.stack.push(Val::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Val::Str(s));
                }
                0x8c => {
                    let n = self.byte()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Val::Str(s));
                }
                b'U' => {
                    let n = self.byte()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Val::Str(s));
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Val::Str(s));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Val::Global(module, name));
                }
                b'q' => {
                    let i = self.byte()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.byte()? as u32;
                    let v = self.memo.get(&i).cloned().ok_or("pickle memo miss")?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo.get(&i).cloned().ok_or("pickle memo miss")?;
                    self.stack.push(v);
                }
                b')' => self.stack.push(Val::Tuple(Vec::new())),
                b']' => self.stack.push(Val::List(Vec::new())),
                b'}' => self.stack.push(Val::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Val::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self
                        .stack
                        .len()
                        .checked_sub(n)
                        .ok_or("pickle stack underflow")?;
                    let items = self.stack.split_off(at);
                    self.stack.push(Val::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Val::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].clone(), c[1].clone()))
                        .collect();
                    self.stack.push(Val::Dict(pairs));
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Val::List(l) = self.top()? {
                        l.push(v);
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Val::List(l) = self.top()? {
                        l.extend(items);
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    if let Val::Dict(d) = self.top()? {
                        d.push((k, v));
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let Val::Dict(d) = self.top()? {
                        d.extend(
                            items
                                .chunks(2)
                                .filter(|c| c.len() == 2)
                                .map(|c| (c[0].clone(), c[1].clone())),
                        );
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: object state (a state_dict's `_metadata`); not needed.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let Val::Tuple(items) = pid else {
                        return Err(format!("persistent id {pid:?}"));
                    };
                    match items.as_slice() {
                        [Val::Str(tag), Val::Global(_, class), Val::Str(key), ..]
                            if tag == "storage" =>
                        {
                            self.stack
                                .push(Val::Storage(storage_kind(class)?, key.clone()));
                        }
                        other => return Err(format!("persistent id {other:?}")),
                    }
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

/// Reads a `torch.save(state_dict)` file's bytes into (name, tensor) pairs,
/// in the file's order, on the CPU.
pub fn read_state_dict(bytes: &[u8]) -> R<Vec<(String, Tensor)>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        format!("not a torch.save zip file ({e}); legacy (pre-1.6) files are not supported")
    })?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or("no data.pkl in the archive")?
        .to_owned();
    let prefix = pkl.trim_end_matches("data.pkl").to_owned();
    let read = |zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str| -> R<Vec<u8>> {
        let mut f = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        let mut v = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut v).map_err(|e| format!("{name}: {e}"))?;
        Ok(v)
    };
    if let Ok(order) = read(&mut zip, &format!("{prefix}byteorder"))
        && order != b"little"
    {
        return Err(format!(
            "byte order {} is not supported",
            String::from_utf8_lossy(&order)
        ));
    }
    let pickle = read(&mut zip, &pkl)?;
    let root = Unpickler {
        data: &pickle,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    }
    .run()?;
    let Val::Dict(entries) = root else {
        return Err(
            "the file does not hold a dict (save model.state_dict(), not the model)".into(),
        );
    };
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Val::Str(name) = k else {
            return Err(format!("a state_dict key is {k:?}, not a string"));
        };
        let Val::Tensor {
            kind,
            key,
            offset,
            size,
            stride,
        } = v
        else {
            return Err(format!("state_dict entry '{name}' is not a tensor"));
        };
        if !storages.contains_key(&key) {
            let bytes = read(&mut zip, &format!("{prefix}data/{key}"))?;
            let item = kind.elt_size_in_bytes();
            if bytes.len() % item != 0 {
                return Err(format!(
                    "storage {key} has {} bytes, not a multiple of {item}",
                    bytes.len()
                ));
            }
            let t = Tensor::f_from_data_size(&bytes, &[(bytes.len() / item) as i64], kind)
                .map_err(|e| e.to_string())?;
            storages.insert(key.clone(), t);
        }
        let storage = &storages[&key];
        let t = storage
            .f_as_strided(&size, &stride, Some(offset))
            .and_then(|t| t.f_contiguous())
            .map_err(|e| format!("state_dict entry '{name}': {e}"))?;
        out.push((name, t));
    }
    Ok(out)
}
