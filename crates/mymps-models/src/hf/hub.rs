//! Hub names in the local Hugging Face cache: `load_model("bert-base-uncased")`
//! or `"org/name"` when the model root has no such folder.
//!
//! The cache is the folder transformers and `huggingface_hub` write
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`),
//! chosen by the server's environment, never by a client. A model is
//! `models--{org}--{name}/snapshots/{revision}/` there, the revision that
//! `refs/main` names (else the only snapshot); its files are links into the
//! repository's `blobs/`, so the bound of a snapshot's files is its
//! repository folder ([`bound`]). Nothing is downloaded.

use std::path::{Path, PathBuf};

use mymps_core::Result;

use crate::convert::{clip, model_error};

/// The Hugging Face cache folder of this process's environment.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// Whether `name` is a hub repository id: `name` or `org/name`, of
/// letters, digits, `-`, `_` and `.`, not starting with `.` or `-`.
pub fn is_hub_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, None) => part(a),
        (Some(a), Some(b), None) => part(a) && part(b),
        _ => false,
    }
}

/// The snapshot folder of hub name `name` in `cache` (canonical, inside
/// it), or an error saying where it looked.
pub fn snapshot(cache: &Path, name: &str) -> Result<PathBuf> {
    let repo = cache.join(format!("models--{}", name.replace('/', "--")));
    let missing = |why: String| {
        model_error(format!(
            "'{}' is not in the Hugging Face cache ({}: {why}; this server downloads nothing: fetch it on a machine with access, e.g. `huggingface-cli download {}`, and copy the cache or the folder)",
            clip(name),
            repo.display(),
            clip(name)
        ))
    };
    let snapshots = repo.join("snapshots");
    if !snapshots.is_dir() {
        return Err(missing("no such folder".into()));
    }
    let revision = match std::fs::read_to_string(repo.join("refs/main")) {
        Ok(r) if r.trim().len() <= 64 && is_hub_name(r.trim()) => r.trim().to_owned(),
        _ => {
            let mut revs: Vec<String> = std::fs::read_dir(&snapshots)
                .map_err(|e| missing(e.to_string()))?
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .take(64)
                .collect();
            revs.sort();
            match revs.len() {
                1 => revs.remove(0),
                0 => return Err(missing("no snapshot".into())),
                _ => {
                    return Err(missing(format!(
                        "no refs/main and several snapshots ({}); give model_path the one to load",
                        revs.join(", ")
                    )));
                }
            }
        }
    };
    let dir = snapshots.join(&revision);
    let real =
        std::fs::canonicalize(&dir).map_err(|e| missing(format!("snapshot {revision}: {e}")))?;
    let root = std::fs::canonicalize(cache).map_err(|e| missing(e.to_string()))?;
    if !real.starts_with(&root) || !real.is_dir() {
        return Err(missing(format!(
            "snapshot {revision} leads out of the cache"
        )));
    }
    Ok(real)
}

/// [`snapshot`] in this environment's cache, for a hub name; `None` for
/// anything else (paths, names with other characters).
pub fn locate(name: &str) -> Option<Result<PathBuf>> {
    if !is_hub_name(name) {
        return None;
    }
    let Some(cache) = cache_dir() else {
        return Some(Err(model_error(
            "no Hugging Face cache (HF_HUB_CACHE, HF_HOME and HOME are unset)",
        )));
    };
    Some(snapshot(&cache, name))
}

/// The folder the files of model directory `dir` must resolve in: `dir`
/// itself, or, for a snapshot of the Hugging Face cache (whose files link
/// into the repository's `blobs/`), its repository folder.
pub fn bound(dir: &Path) -> PathBuf {
    let in_cache = cache_dir()
        .and_then(|c| std::fs::canonicalize(c).ok())
        .is_some_and(|c| dir.starts_with(c));
    let repo = dir
        .parent()
        .filter(|s| s.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .filter(|r| {
            r.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("models--"))
        });
    match repo {
        Some(r) if in_cache => r.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names() {
        for ok in [
            "bert-base-uncased",
            "org/model",
            "Qwen/Qwen3-0.6B",
            "a.b_c-d/e",
        ] {
            assert!(is_hub_name(ok), "{ok}");
        }
        for bad in [
            "", "/abs", "a/b/c", "../x", "a/..", ".hidden", "-x", "a b", "a/", "x\0",
        ] {
            assert!(!is_hub_name(bad), "{bad}");
        }
    }

    #[test]
    fn snapshots_in_a_cache() {
        let cache = std::env::temp_dir().join(format!("mymps-hub-test-{}", std::process::id()));
        let repo = cache.join("models--org--m");
        std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        let cache_real = std::fs::canonicalize(&cache).unwrap();
        assert_eq!(
            snapshot(&cache, "org/m").unwrap(),
            cache_real.join("models--org--m/snapshots/abc")
        );
        std::fs::create_dir_all(repo.join("snapshots/def")).unwrap();
        let e = snapshot(&cache, "org/m").unwrap_err();
        assert!(e.message.contains("several snapshots (abc, def)"), "{e}");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "def\n").unwrap();
        assert!(
            snapshot(&cache, "org/m")
                .unwrap()
                .ends_with("snapshots/def")
        );
        let e = snapshot(&cache, "org/other").unwrap_err();
        assert!(e.message.contains("models--org--other"), "{e}");
        // A refs/main that names a path is ignored, not followed.
        std::fs::write(repo.join("refs/main"), "../../x").unwrap();
        assert!(snapshot(&cache, "org/m").is_err());
        let _ = std::fs::remove_dir_all(&cache);
    }
}
