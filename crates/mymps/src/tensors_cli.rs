//! Shared server-resident tensors from the shell: `mymps put`, `get`,
//! `free` and `tensors`.
//!
//! A command is one connection, and a connection's handles go with it, so
//! only tensors shared under a name outlive a command: `put` uploads a
//! .npy file and shares it under `--name`, the others name it. The
//! protocol has no request that lists shared names: `tensors` shows the
//! server's totals (from `health`) and describes the names it is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mymps::client::Caller;
use mymps::protocol::Keep;
use mymps::protocol::rpc;
use mymps::protocol::{HandleInfo, TensorRef};
use mymps::{Error, ErrorCode, Tensor, npy};

use crate::{ClientArgs, print_json};

/// `mymps put FILE.npy --name N`: uploads and shares under `name`.
pub(crate) fn put(c: &ClientArgs, file: &Path, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::bad_argument("--name must not be empty"));
    }
    let t = npy::read(file)?;
    let client = c.connect()?;
    let handle = client
        .put(t)?
        .pop()
        .ok_or_else(|| Error::internal("put returned no handle"))?
        .handle;
    // A refused name (taken) leaves nothing behind: the handle goes with
    // this command's connection.
    let info = client.call(rpc::Share {
        handle,
        name: name.to_owned(),
    })?;
    if c.json {
        print_json(&info);
    } else {
        println!("{}", line(&info));
    }
    Ok(())
}

/// `mymps get N [-o FILE.npy]`: a shared tensor's data.
pub(crate) fn get(c: &ClientArgs, name: &str, out: Option<&PathBuf>) -> Result<(), Error> {
    let t = c
        .connect()?
        .fetch(vec![TensorRef::Shared(name.to_owned())])?
        .pop()
        .ok_or_else(|| Error::internal("fetch returned no tensor"))?;
    if let Some(p) = out {
        npy::write(p, &t)?;
    }
    let path = out.map(|p| p.display().to_string());
    if c.json {
        print_json(&serde_json::json!({
            "name": name, "dtype": t.dtype().name(), "shape": t.shape(), "path": path,
        }));
    } else {
        let head = format!("{name}  {} {:?}", t.dtype().name(), t.shape());
        match path {
            Some(p) => println!("{head}  -> {p}"),
            None => {
                println!("{head}");
                eprintln!("(use -o FILE.npy to write its data)");
            }
        }
    }
    Ok(())
}

/// `mymps free N...`: frees shared tensors by name, in one request; names
/// that are not shared make it fail (after the others are freed).
pub(crate) fn free(c: &ClientArgs, names: &[String]) -> Result<(), Error> {
    let refs = names.iter().map(|n| TensorRef::Shared(n.clone())).collect();
    let freed = c.connect()?.free(refs)?;
    let unknown: Vec<String> = freed
        .unknown
        .iter()
        .map(|r| match r {
            TensorRef::Shared(n) => n.clone(),
            TensorRef::Handle(h) => h.to_string(),
        })
        .collect();
    if c.json {
        print_json(&serde_json::json!({"freed": freed.freed, "unknown": unknown}));
    } else {
        println!("freed {}", freed.freed);
    }
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::UnknownTensor,
            format!("not shared (unknown, or freed): {}", unknown.join(", ")),
        ))
    }
}

/// `mymps tensors [N...]`: the server's resident totals, and what the
/// names given are (one `describe`).
pub(crate) fn tensors(c: &ClientArgs, names: &[String]) -> Result<(), Error> {
    let client = c.connect()?;
    let h = client.health()?;
    let described = if names.is_empty() {
        Vec::new()
    } else {
        client.describe(names.iter().map(|n| TensorRef::Shared(n.clone())).collect())?
    };
    if c.json {
        print_json(&serde_json::json!({
            "resident_tensors": h.resident_tensors,
            "resident_bytes": h.resident_bytes,
            "tensors": described,
        }));
        return Ok(());
    }
    println!(
        "{} resident tensors, {} bytes (every connection's and the shared ones)",
        h.resident_tensors, h.resident_bytes
    );
    for info in &described {
        println!("{}", line(info));
    }
    if names.is_empty() {
        eprintln!("(the server does not list shared names; give names to describe them)");
    }
    Ok(())
}

/// Data inputs and shared-tensor inputs of `exec` / `infer`.
pub(crate) type Inputs = (Vec<(String, Tensor)>, BTreeMap<String, TensorRef>);

/// `exec` / `infer` inputs: `NAME=FILE.npy` (data, sent) or `NAME=@SHARED`
/// (a tensor shared under that name, used where it is).
pub(crate) fn inputs(args: &[String]) -> Result<Inputs, Error> {
    let mut tensors = Vec::new();
    let mut refs = BTreeMap::new();
    for a in args {
        let (name, value) = crate::split_pair(a, "input")?;
        match value.strip_prefix('@') {
            Some("") => {
                return Err(Error::bad_argument(format!(
                    "input '{a}': name a shared tensor after '@'"
                )));
            }
            Some(shared) => {
                refs.insert(name, TensorRef::Shared(shared.to_owned()));
            }
            None => tensors.push((name, npy::read(Path::new(&value))?)),
        }
    }
    Ok((tensors, refs))
}

/// `--share RESULT=NAME` arguments: the results to keep on the server,
/// and the names to share them under.
pub(crate) fn shares(args: &[String]) -> Result<(Keep, Vec<(String, String)>), Error> {
    let pairs = args
        .iter()
        .map(|a| crate::split_pair(a, "--share"))
        .collect::<Result<Vec<_>, _>>()?;
    let keep = if pairs.is_empty() {
        Keep::None
    } else {
        Keep::Some(pairs.iter().map(|(r, _)| r.clone()).collect())
    };
    Ok((keep, pairs))
}

/// Shares each kept result under its `--share` name (a result kept but not
/// named would go with the connection: there is none).
pub(crate) fn share_kept(
    client: &mymps::client::blocking::Client,
    kept: &[HandleInfo],
    names: &[(String, String)],
) -> Result<Vec<HandleInfo>, Error> {
    let mut shared = Vec::with_capacity(kept.len());
    for (result, name) in names {
        let info = kept
            .iter()
            .find(|k| &k.name == result)
            .ok_or_else(|| Error::internal(format!("the server kept no result '{result}'")))?;
        shared.push(client.call(rpc::Share {
            handle: info.handle,
            name: name.clone(),
        })?);
    }
    Ok(shared)
}

/// One shared tensor as a line: `w  float32 [2, 3]  on cpu, 24 bytes`.
pub(crate) fn line(info: &HandleInfo) -> String {
    let bytes = mymps::DType::from_name(&info.dtype)
        .and_then(|d| {
            info.shape
                .iter()
                .try_fold(d.itemsize() as u64, |n, &x| n.checked_mul(x))
        })
        .map(|b| format!(", {b} bytes"))
        .unwrap_or_default();
    format!(
        "{}  {} {:?}  on {}{bytes}",
        info.name, info.dtype, info.shape, info.device
    )
}
