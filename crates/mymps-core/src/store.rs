//! The server's table of resident tensors: who owns each, what each
//! costs, and the caps.
//!
//! A tensor belongs to the connection that made it (by `put`, or as a kept
//! result) and is freed when that connection closes, or to the server once
//! it is shared under a name, until someone frees it. Handles are unique
//! for the server's lifetime, never reused, so a stale handle can never
//! name another tensor. Each entry holds its bytes of the server's memory
//! budget until it is freed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::OwnedSemaphorePermit;

use crate::error::{Error, ErrorCode, Result};
use crate::protocol::{HandleInfo, TensorRef};
use crate::resident::Resident;

/// Caps on resident tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentLimits {
    /// Tensors one connection may hold.
    pub per_connection: u64,
    /// Bytes one connection's tensors may take.
    pub per_connection_bytes: u64,
    /// Tensors the server holds (every connection's and the shared ones).
    pub total: u64,
    /// Bytes of all resident tensors (they also count in the memory
    /// budget, which bounds them too).
    pub total_bytes: u64,
}

impl Default for ResidentLimits {
    fn default() -> ResidentLimits {
        ResidentLimits {
            per_connection: 65_536,
            per_connection_bytes: u64::MAX,
            total: 1 << 20,
            total_bytes: u64::MAX,
        }
    }
}

/// Who holds a resident tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Connection(u64),
    Shared(String),
}

struct Entry {
    tensor: Resident,
    owner: Owner,
    bytes: u64,
    _budget: Vec<OwnedSemaphorePermit>,
}

#[derive(Default, Clone, Copy)]
struct Usage {
    count: u64,
    bytes: u64,
}

#[derive(Default)]
struct Inner {
    next: u64,
    entries: HashMap<u64, Entry>,
    names: HashMap<String, u64>,
    by_connection: HashMap<u64, HashSet<u64>>,
    usage: HashMap<u64, Usage>,
    total: Usage,
}

/// Memory freed by the table, to be dropped where dropping may take time
/// (a device free, an unmap): not under the table's lock.
pub(crate) struct Freed(#[allow(dead_code)] Vec<Entry>);

impl Freed {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The table.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    limits: ResidentLimits,
}

fn unknown(r: &TensorRef, why: &str) -> Error {
    Error::new(ErrorCode::UnknownTensor, format!("{r} {why}"))
}

impl Store {
    pub(crate) fn new(limits: ResidentLimits) -> Store {
        Store {
            inner: Mutex::new(Inner {
                next: 1,
                ..Inner::default()
            }),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; a poisoned table is still
        // consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tensors and bytes held now.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let t = self.lock().total;
        (t.count, t.bytes)
    }

    /// Refuses `count` more tensors of `bytes` for `connection` when a cap
    /// would be exceeded (checked before work whose results are kept).
    pub(crate) fn check_room(&self, connection: u64, count: u64, bytes: u64) -> Result<()> {
        let inner = self.lock();
        let used = inner.usage.get(&connection).copied().unwrap_or_default();
        self.room(&used, &inner.total, count, bytes)
    }

    fn room(&self, used: &Usage, total: &Usage, count: u64, bytes: u64) -> Result<()> {
        let l = &self.limits;
        let over = |what: &str, have: u64, add: u64, cap: u64| {
            Error::new(
                ErrorCode::LimitReached,
                format!("{what}: {have} held, {add} more asked, at most {cap}; free some first"),
            )
        };
        if used.count.saturating_add(count) > l.per_connection {
            return Err(over(
                "resident tensors of this connection",
                used.count,
                count,
                l.per_connection,
            ));
        }
        if used.bytes.saturating_add(bytes) > l.per_connection_bytes {
            return Err(over(
                "bytes of this connection's resident tensors",
                used.bytes,
                bytes,
                l.per_connection_bytes,
            ));
        }
        if total.count.saturating_add(count) > l.total {
            return Err(over(
                "resident tensors of the server",
                total.count,
                count,
                l.total,
            ));
        }
        if total.bytes.saturating_add(bytes) > l.total_bytes {
            return Err(over(
                "bytes of the server's resident tensors",
                total.bytes,
                bytes,
                l.total_bytes,
            ));
        }
        Ok(())
    }

    /// Keeps tensors for `connection`, each with the memory budget it
    /// holds; all or none (a cap reached keeps none).
    pub(crate) fn insert(
        &self,
        connection: u64,
        tensors: Vec<(String, Resident, Vec<OwnedSemaphorePermit>)>,
    ) -> Result<Vec<HandleInfo>> {
        let mut inner = self.lock();
        let count = tensors.len() as u64;
        let bytes = tensors
            .iter()
            .fold(0u64, |n, (_, t, _)| n.saturating_add(t.nbytes()));
        let used = inner.usage.get(&connection).copied().unwrap_or_default();
        self.room(&used, &inner.total, count, bytes)?;
        let mut infos = Vec::with_capacity(tensors.len());
        for (name, tensor, budget) in tensors {
            let handle = inner.next;
            inner.next += 1;
            infos.push(info(handle, name, &tensor));
            let bytes = tensor.nbytes();
            inner.entries.insert(
                handle,
                Entry {
                    tensor,
                    owner: Owner::Connection(connection),
                    bytes,
                    _budget: budget,
                },
            );
            inner
                .by_connection
                .entry(connection)
                .or_default()
                .insert(handle);
        }
        let u = inner.usage.entry(connection).or_default();
        u.count += count;
        u.bytes = u.bytes.saturating_add(bytes);
        inner.total.count += count;
        inner.total.bytes = inner.total.bytes.saturating_add(bytes);
        Ok(infos)
    }

    /// The tensor `r` names, if `connection` may use it.
    pub(crate) fn get(&self, connection: u64, r: &TensorRef) -> Result<Resident> {
        let inner = self.lock();
        let handle = resolve(&inner, r)?;
        match inner.entries.get(&handle) {
            None => Err(unknown(r, "is not a resident tensor (unknown, or freed)")),
            Some(e) => match &e.owner {
                Owner::Connection(c) if *c != connection => Err(unknown(
                    r,
                    "belongs to another connection (share it under a name to use it elsewhere)",
                )),
                _ => Ok(e.tensor.clone()),
            },
        }
    }

    /// What `refs` name, as [`Store::get`] finds them: for each, its
    /// handle, its shared name (or `""`), dtype, shape and device.
    pub(crate) fn describe(&self, connection: u64, refs: &[TensorRef]) -> Result<Vec<HandleInfo>> {
        let inner = self.lock();
        refs.iter()
            .map(|r| {
                let handle = resolve(&inner, r)?;
                match inner.entries.get(&handle) {
                    None => Err(unknown(r, "is not a resident tensor (unknown, or freed)")),
                    Some(e) => match &e.owner {
                        Owner::Connection(c) if *c != connection => Err(unknown(
                            r,
                            "belongs to another connection (share it under a name to use it elsewhere)",
                        )),
                        Owner::Connection(_) => Ok(info(handle, String::new(), &e.tensor)),
                        Owner::Shared(name) => Ok(info(handle, name.clone(), &e.tensor)),
                    },
                }
            })
            .collect()
    }

    /// Frees what `refs` name and `connection` may free (its own handles,
    /// and shared tensors); the rest are returned as unknown.
    pub(crate) fn free(&self, connection: u64, refs: Vec<TensorRef>) -> (Freed, Vec<TensorRef>) {
        let mut inner = self.lock();
        let mut freed = Vec::new();
        let mut missing = Vec::new();
        for r in refs {
            let handle = match resolve(&inner, &r) {
                Ok(h) => h,
                Err(_) => {
                    missing.push(r);
                    continue;
                }
            };
            let allowed = match inner.entries.get(&handle).map(|e| &e.owner) {
                Some(Owner::Connection(c)) => *c == connection,
                Some(Owner::Shared(_)) => true,
                None => false,
            };
            if !allowed {
                missing.push(r);
                continue;
            }
            if let Some(e) = remove(&mut inner, handle) {
                freed.push(e);
            }
        }
        (Freed(freed), missing)
    }

    /// Gives `connection`'s `handle` the server-wide `name`: it no longer
    /// belongs to the connection (it outlives it) until it is freed.
    pub(crate) fn share(&self, connection: u64, handle: u64, name: String) -> Result<HandleInfo> {
        let mut inner = self.lock();
        let r = TensorRef::Handle(handle);
        if name.is_empty() || name.len() > 256 {
            return Err(Error::bad_argument(
                "a shared tensor's name must have 1 to 256 bytes",
            ));
        }
        if inner.names.contains_key(&name) {
            return Err(Error::bad_argument(format!(
                "a tensor is already shared as '{}'; free it first",
                crate::error::clip(&name, 64)
            )));
        }
        let bytes = match inner.entries.get(&handle) {
            None => return Err(unknown(&r, "is not a resident tensor (unknown, or freed)")),
            Some(e) if e.owner != Owner::Connection(connection) => {
                return Err(unknown(&r, "is not a handle of this connection"));
            }
            Some(e) => e.bytes,
        };
        let e = inner.entries.get_mut(&handle).expect("just found");
        e.owner = Owner::Shared(name.clone());
        let info = info(handle, name.clone(), &e.tensor);
        inner.names.insert(name, handle);
        if let Some(set) = inner.by_connection.get_mut(&connection) {
            set.remove(&handle);
        }
        if let Some(u) = inner.usage.get_mut(&connection) {
            u.count -= 1;
            u.bytes = u.bytes.saturating_sub(bytes);
        }
        Ok(info)
    }

    /// Frees every tensor `connection` still holds (it closed).
    pub(crate) fn close(&self, connection: u64) -> Freed {
        let mut inner = self.lock();
        let handles = inner.by_connection.remove(&connection).unwrap_or_default();
        let freed = handles
            .into_iter()
            .filter_map(|h| remove(&mut inner, h))
            .collect();
        inner.usage.remove(&connection);
        Freed(freed)
    }
}

fn resolve(inner: &Inner, r: &TensorRef) -> Result<u64> {
    match r {
        TensorRef::Handle(h) => Ok(*h),
        TensorRef::Shared(name) => inner
            .names
            .get(name)
            .copied()
            .ok_or_else(|| unknown(r, "is not shared (unknown, or freed)")),
    }
}

fn remove(inner: &mut Inner, handle: u64) -> Option<Entry> {
    let e = inner.entries.remove(&handle)?;
    match &e.owner {
        Owner::Connection(c) => {
            if let Some(set) = inner.by_connection.get_mut(c) {
                set.remove(&handle);
            }
            if let Some(u) = inner.usage.get_mut(c) {
                u.count -= 1;
                u.bytes = u.bytes.saturating_sub(e.bytes);
            }
        }
        Owner::Shared(name) => {
            inner.names.remove(name);
        }
    }
    inner.total.count -= 1;
    inner.total.bytes = inner.total.bytes.saturating_sub(e.bytes);
    Some(e)
}

/// A resident tensor's description for the client.
pub(crate) fn info(handle: u64, name: String, t: &Resident) -> HandleInfo {
    HandleInfo {
        handle,
        name,
        dtype: t.dtype().name().to_owned(),
        shape: t.shape().iter().map(|&d| d as u64).collect(),
        device: t.device().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn t(n: usize) -> Resident {
        Resident::host(Tensor::from_vec(vec![0f32; n], &[n]).unwrap())
    }

    #[test]
    fn ownership_sharing_and_caps() {
        let s = Store::new(ResidentLimits {
            per_connection: 3,
            per_connection_bytes: 64,
            ..ResidentLimits::default()
        });
        let a = s.insert(1, vec![("x".into(), t(4), vec![])]).unwrap();
        let h = a[0].handle;
        assert_eq!(a[0].shape, vec![4]);
        assert!(s.get(1, &TensorRef::Handle(h)).is_ok());
        let e = s.get(2, &TensorRef::Handle(h)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownTensor);
        assert!(e.message.contains("another connection"), "{e}");
        // Caps: bytes (17 floats = 68 > 64), then count; all or none.
        let e = s.insert(1, vec![("y".into(), t(13), vec![])]).unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitReached);
        let e = s
            .insert(1, (0..3).map(|i| (i.to_string(), t(1), vec![])).collect())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitReached);
        assert_eq!(s.totals(), (1, 16));
        // Shared: usable elsewhere, outlives its connection.
        s.share(1, h, "w".into()).unwrap();
        assert!(s.share(1, h, "w2".into()).is_err());
        assert!(s.get(2, &TensorRef::Shared("w".into())).is_ok());
        assert!(s.close(1).is_empty());
        assert_eq!(s.totals(), (1, 16));
        // Another connection frees it by name; then the name is unknown.
        let (freed, unknown) = s.free(
            2,
            vec![TensorRef::Shared("w".into()), TensorRef::Handle(99)],
        );
        assert_eq!((freed.0.len(), unknown.len()), (1, 1));
        assert_eq!(s.totals(), (0, 0));
        let e = s.get(2, &TensorRef::Shared("w".into())).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownTensor);
        // A closed connection's handles are freed; handles are not reused.
        let b = s.insert(3, vec![("z".into(), t(2), vec![])]).unwrap();
        assert!(b[0].handle > h);
        assert_eq!(s.close(3).0.len(), 1);
        assert_eq!(s.totals(), (0, 0));
        // A foreign handle cannot be freed.
        let c = s.insert(4, vec![("z".into(), t(2), vec![])]).unwrap();
        let (freed, unknown) = s.free(5, vec![TensorRef::Handle(c[0].handle)]);
        assert_eq!((freed.0.len(), unknown.len()), (0, 1));
    }
}
