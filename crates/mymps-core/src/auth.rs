//! Shared-token authentication: the token files servers and clients read.
//! (The server checks the token in the handshake, see [`crate::server`].)

use std::path::Path;

use crate::error::{Error, Result};

/// Reads a token file: its content without surrounding whitespace, which
/// must not be empty.
pub fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::bad_argument(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::bad_argument(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("mymps-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        std::fs::write(&f, "  s3cret \n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "s3cret");
        std::fs::write(&f, " \n").unwrap();
        assert!(
            read_token_file(&f)
                .unwrap_err()
                .message
                .contains("is empty")
        );
        let e = read_token_file(&dir.join("missing")).unwrap_err();
        assert!(e.message.contains("cannot read the token file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
