//! Hostile `torch.save` checkpoints (issue 22, "no request can kill or
//! starve the server"): each is written here byte by byte (zip and pickle),
//! and each must give a clean, typed error — never an abort, a stack
//! overflow or an allocation that the file's size does not justify.

use std::path::PathBuf;

use mymps_core::ErrorCode;
use mymps_core::model::{LoadRequest, ModelLoader};
use mymps_models::checkpoint::{CheckpointLoader, read_state_dict};
use tch::{Device, Kind, Tensor};

// ---- a zip writer (stored entries, as torch.save writes them) ----------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A zip entry; `declared` overrides the uncompressed size that the
/// headers state (a zip64 field when it does not fit 32 bits).
struct Entry<'a> {
    name: String,
    data: &'a [u8],
    declared: Option<u64>,
}

fn entry(name: impl Into<String>, data: &[u8]) -> Entry<'_> {
    Entry {
        name: name.into(),
        data,
        declared: None,
    }
}

fn zip(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries {
        let offset = out.len() as u32;
        let size = e.data.len() as u32;
        let (unc32, extra) = match e.declared {
            Some(d) if d >= u32::MAX as u64 => {
                let mut x = vec![1, 0, 8, 0];
                x.extend_from_slice(&d.to_le_bytes());
                (u32::MAX, x)
            }
            Some(d) => (d as u32, Vec::new()),
            None => (size, Vec::new()),
        };
        let crc = crc32(e.data);
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&45u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&0x21u16.to_le_bytes()); // date: 1980-01-01
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&unc32.to_le_bytes());
            v.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            v.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(e.data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&45u16.to_le_bytes()); // made by
        common(&mut central);
        central.extend_from_slice(&[0; 6]); // comment, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(e.name.as_bytes());
        central.extend_from_slice(&extra);
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    let n = entries.len() as u16;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment
    out
}

// ---- a pickle writer (the opcodes torch.save uses) ---------------------

#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn new() -> P {
        P(vec![0x80, 2])
    }
    fn op(&mut self, b: &[u8]) -> &mut P {
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut P {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }
    fn long(&mut self, i: i64) -> &mut P {
        self.op(&[0x8a, 8]).op(&i.to_le_bytes())
    }
    fn global(&mut self, module: &str, name: &str) -> &mut P {
        self.op(b"c")
            .op(module.as_bytes())
            .op(b"\n")
            .op(name.as_bytes())
            .op(b"\n")
    }
    fn ints(&mut self, v: &[i64]) -> &mut P {
        self.op(b"(");
        for &i in v {
            self.long(i);
        }
        self.op(b"t")
    }
    /// A `torch._utils._rebuild_tensor_v2` call over storage `key`.
    fn tensor(
        &mut self,
        class: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> &mut P {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.op(b"(")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .long(numel)
            .op(b"tQ");
        self.long(offset).ints(size).ints(stride).op(b"\x89");
        self.global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
    }
    fn done(&mut self) -> Vec<u8> {
        self.op(b".");
        std::mem::take(&mut self.0)
    }
}

/// A `torch.save` archive of `pickle` and storages `data/<key>`.
fn torch_save(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut entries = vec![
        entry("archive/data.pkl", pickle),
        entry("archive/byteorder", b"little"),
    ];
    for (k, d) in storages {
        entries.push(entry(format!("archive/data/{k}"), d));
    }
    zip(&entries)
}

/// A fresh folder under the system's temporary one.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mymps-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Reads `bytes` as a checkpoint file; the error's message.
fn read_err(name: &str, bytes: &[u8]) -> String {
    let d = scratch(name);
    let path = d.join("sd.pt");
    std::fs::write(&path, bytes).unwrap();
    let r = read_state_dict(path.to_str().unwrap(), Device::Cpu);
    let _ = std::fs::remove_dir_all(&d);
    let e = r
        .map(|sd| sd.len())
        .expect_err("a hostile file must be refused");
    assert_eq!(e.code, ErrorCode::Model, "{e}");
    assert!(e.message.len() < 2000, "a long message: {}", e.message);
    e.message
}

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---- the writers make what the reader reads ----------------------------

#[test]
fn a_hand_written_state_dict_loads() {
    // An OrderedDict (memoized, as torch.save does) with a tensor, a
    // second tensor that views the same storage at an offset, and a
    // transposed view.
    let mut p = P::new();
    p.global("collections", "OrderedDict")
        .op(b")Rq\x00(")
        .str("w")
        .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1])
        .str("row")
        .tensor("FloatStorage", "0", 6, 3, &[3], &[1])
        .str("t")
        .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3])
        .op(b"u");
    let data = floats(&[0., 1., 2., 3., 4., 5.]);
    let d = scratch("ok");
    let path = d.join("sd.pt");
    std::fs::write(&path, torch_save(&p.done(), &[("0", &data)])).unwrap();
    let sd = read_state_dict(path.to_str().unwrap(), Device::Cpu).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    let w = Tensor::from_slice(&[0f32, 1., 2., 3., 4., 5.]).reshape([2, 3]);
    assert!(sd["w"].equal(&w));
    assert!(sd["row"].equal(&w.get(1)));
    assert!(sd["t"].equal(&w.tr()));
    assert_eq!(sd["t"].kind(), Kind::Float);
}

// ---- 1. nesting -------------------------------------------------------

const DEEP: usize = 300_000;

/// `op` `n` times, each followed by a PROTO (a no-op): deep values from
/// dense opcodes cost more memory than the unpickler allows per byte
/// (`a_pickle_that_needs_much_more_memory_than_its_size_is_refused`), and
/// these tests are about depth.
fn spaced(op: u8, n: usize) -> Vec<u8> {
    [op, 0x80, 2].repeat(n)
}

#[test]
fn a_list_nested_300000_deep_is_refused_without_overflowing_the_stack() {
    // {"a": [[[...]]]}: every EMPTY_LIST appended to the one below it.
    let mut p = P::new();
    p.op(b"}(").str("a");
    p.op(&spaced(b']', DEEP)).op(&vec![b'a'; DEEP - 1]).op(b"u");
    let m = read_err("deep-list", &torch_save(&p.done(), &[]));
    assert!(m.contains("'a' is not a tensor"), "{m}");
    // As the root, too.
    let mut p = P::new();
    p.op(&spaced(b']', DEEP)).op(&vec![b'a'; DEEP - 1]);
    let m = read_err("deep-root", &torch_save(&p.done(), &[]));
    assert!(m.contains("does not hold a dict"), "{m}");
}

#[test]
fn tuples_nested_300000_deep_in_a_tensor_size_give_a_short_error() {
    // The size of a tensor is (((...(1,)...),),): TUPLE1 over and over;
    // the error quotes it, in a few levels only.
    let mut p = P::new();
    p.op(b"}(").str("w");
    p.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
    p.op(b"(")
        .str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .long(1)
        .op(b"tQ");
    p.long(0).op(b"K\x01").op(&spaced(0x85, DEEP)).ints(&[1]);
    p.op(b"\x89)tRu");
    let m = read_err(
        "deep-tuple",
        &torch_save(&p.done(), &[("0", &floats(&[1.]))]),
    );
    assert!(m.contains("expected an int"), "{m}");
}

#[test]
fn a_list_that_contains_itself_gives_a_short_error() {
    // l = []; l.append(l); the tensor's size is l.
    let mut p = P::new();
    p.op(b"}(").str("w");
    p.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
    p.op(b"(")
        .str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .long(1)
        .op(b"tQ");
    p.long(0).op(b"]q\x07h\x07a").ints(&[1]);
    p.op(b"\x89)tRu");
    let m = read_err("cycle", &torch_save(&p.done(), &[("0", &floats(&[1.]))]));
    assert!(m.contains("expected an int"), "{m}");
}

#[test]
fn a_pickle_that_needs_much_more_memory_than_its_size_is_refused() {
    // A million empty lists: about 48 bytes of memory per byte.
    let mut p = P::new();
    p.op(&vec![b']'; 1 << 20]);
    let m = read_err("dense", &torch_save(&p.done(), &[]));
    assert!(m.contains("bytes of memory"), "{m}");
}

// ---- 2. declared sizes ------------------------------------------------

#[test]
fn a_zip_entry_declaring_2_pow_40_bytes_is_refused_before_reserving() {
    let mut p = P::new();
    let pickle = p.op(b"}").done();
    let mut entries = vec![
        entry("archive/data.pkl", &pickle),
        entry("archive/byteorder", b"little"),
    ];
    entries[0].declared = Some(1 << 40);
    let m = read_err("declared-pkl", &zip(&entries));
    assert!(m.contains("1099511627776"), "{m}");
    // The byte order entry, too.
    entries[0].declared = None;
    entries[1].declared = Some(1 << 40);
    let m = read_err("declared-order", &zip(&entries));
    assert!(m.contains("1099511627776"), "{m}");
}

#[test]
fn a_storage_declaring_2_pow_40_bytes_is_refused_before_reserving() {
    let mut p = P::new();
    p.op(b"}(")
        .str("w")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
        .op(b"u");
    let pickle = p.done();
    let data = floats(&[1., 2.]);
    let mut entries = vec![
        entry("archive/data.pkl", &pickle),
        entry("archive/data/0", &data),
    ];
    entries[1].declared = Some(1 << 40);
    let m = read_err("declared-storage", &zip(&entries));
    assert!(m.contains("1099511627776"), "{m}");
}

#[test]
fn a_storage_smaller_than_its_numel_is_refused() {
    let mut p = P::new();
    p.op(b"}(")
        .str("w")
        .tensor("FloatStorage", "0", 3, 0, &[1], &[1])
        .op(b"u");
    let m = read_err(
        "numel",
        &torch_save(&p.done(), &[("0", &floats(&[1., 2.]))]),
    );
    assert!(
        m.contains("storage 0") && m.contains("fewer than the 12"),
        "{m}"
    );
}

#[test]
fn a_storage_entry_with_a_bad_crc_is_refused() {
    let mut p = P::new();
    p.op(b"}(")
        .str("w")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
        .op(b"u");
    let mut file = torch_save(&p.done(), &[("0", &floats(&[1., 2.]))]);
    // The storage's bytes are the only 1.0f32 (0x3f800000) in the file.
    let at = file
        .windows(4)
        .position(|w| w == 1f32.to_le_bytes())
        .unwrap();
    file[at] ^= 1;
    let m = read_err("crc", &file);
    assert!(
        m.contains("storage 0") && m.to_lowercase().contains("checksum"),
        "{m}"
    );
}

#[test]
fn a_storage_numel_of_2_pow_62_is_refused() {
    let mut p = P::new();
    p.op(b"}(")
        .str("w")
        .tensor("FloatStorage", "0", 1 << 62, 0, &[1], &[1])
        .op(b"u");
    let m = read_err(
        "numel-huge",
        &torch_save(&p.done(), &[("0", &floats(&[1.]))]),
    );
    assert!(m.contains("storage 0"), "{m}");
}

#[test]
fn views_past_their_storage_or_expanding_it_past_the_file_are_refused() {
    let data = floats(&[1., 2., 3., 4.]);
    let cases: [(i64, &[i64], &[i64]); 4] = [
        (3, &[2], &[1]),                         // past the end
        (1 << 62, &[1], &[1]),                   // an offset past the end
        (0, &[1 << 20, 1 << 20], &[0, 0]),       // 2^40 elements of one
        (0, &[1 << 40, 1 << 40], &[1 << 40, 1]), // overflowing arithmetic
    ];
    for (offset, size, stride) in cases {
        let mut p = P::new();
        p.op(b"}(")
            .str("w")
            .tensor("FloatStorage", "0", 4, offset, size, stride)
            .op(b"u");
        let m = read_err("view", &torch_save(&p.done(), &[("0", &data)]));
        assert!(m.contains("'w'"), "{m}");
    }
}

// ---- 4. memo expansion ("billion laughs") -----------------------------

#[test]
fn a_billion_laughs_pickle_stays_small() {
    // x0 = []; x(k+1) = (xk, xk), each from two memo gets: 2^200 nodes if
    // a memo get copies. The x's are left in a tuple under the root dict;
    // the tensor's size is x200.
    let mut p = P::new();
    p.op(b"(]r\x00\x00\x00\x00");
    for k in 0u32..200 {
        let k4 = k.to_le_bytes();
        p.op(b"j").op(&k4).op(b"j").op(&k4).op(b"\x86");
        p.op(b"r").op(&(k + 1).to_le_bytes());
    }
    p.op(b"t");
    p.op(b"}(").str("w");
    p.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
    p.op(b"(")
        .str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .long(1)
        .op(b"tQ");
    p.long(0).op(b"j").op(&200u32.to_le_bytes());
    p.ints(&[1]).op(b"\x89)tRu");
    let pickle = p.done();
    assert!(pickle.len() < 4000);
    let m = read_err("laughs", &torch_save(&pickle, &[("0", &floats(&[1.]))]));
    assert!(m.contains("expected an int"), "{m}");
}

// ---- the unpickler never runs code -------------------------------------

#[test]
fn reduce_payloads_are_never_run() {
    let d = scratch("reduce");
    let marker = d.join("ran");
    let cmd = format!("touch {}", marker.display());
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("subprocess", "call"),
        ("builtins", "getattr"),
    ] {
        let mut p = P::new();
        p.global(module, name).op(b"(").str(&cmd).op(b"tR");
        let m = read_err("reduce", &torch_save(&p.done(), &[]));
        assert!(m.contains(&format!("{module}.{name}")), "{m}");
        assert!(m.contains("refused"), "{m}");
        // Inside the state_dict, too.
        let mut p = P::new();
        p.op(b"}(").str("w").global(module, name).op(b"(").str(&cmd);
        p.op(b"tRu");
        let m = read_err("reduce", &torch_save(&p.done(), &[]));
        assert!(m.contains("refused"), "{m}");
    }
    assert!(!marker.exists());
    let _ = std::fs::remove_dir_all(&d);
}

// ---- error messages stay short -----------------------------------------

#[test]
fn a_state_dict_of_many_long_keys_gives_a_short_error() {
    // 5,000 entries named by 1,000 characters each, all one storage.
    let mut p = P::new();
    p.op(b"}(");
    for i in 0..5000 {
        p.str(&format!("{i:01000}"))
            .tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
    }
    p.op(b"u");
    let d = scratch("many-keys");
    let path = d.join("sd.pt");
    std::fs::write(&path, torch_save(&p.done(), &[("0", &floats(&[1.]))])).unwrap();
    let req = LoadRequest {
        name: "m".into(),
        model_type: "checkpoint".into(),
        model_path: Some(path.display().to_string()),
        model_class: Some("linear".into()),
        ..Default::default()
    };
    let r = CheckpointLoader::all().load(&req, "cpu");
    let _ = std::fs::remove_dir_all(&d);
    let m = r.map(|_| ()).unwrap_err().message;
    assert!(
        m.contains("unexpected keys") && m.contains("(4980 more)"),
        "{m}"
    );
    assert!(m.len() < 4000, "{} bytes", m.len());
}
