//! Reading a shared secret from a file ([`read_secret_file`]), the way
//! `--secret-file` and `SEQFEED_SECRET_FILE` take it: a file only its owner
//! (and group) may read, one trailing newline stripped.

use std::path::{Path, PathBuf};

/// Why a secret file cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// The file cannot be read.
    #[error("cannot read the secret file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Every user of the host may read (or write) the file.
    #[error(
        "the secret file {} is accessible to every user (mode {mode:04o}); \
         restrict it, e.g. chmod 600 {}",
        path.display(),
        path.display()
    )]
    WorldAccessible {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds nothing (after its trailing newline).
    #[error("the secret file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not UTF-8 text.
    #[error("the secret file {} is not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the shared secret in `path`: refused when every user may read or
/// write the file (`o+r` or `o+w`), when it is empty, or not UTF-8; one
/// trailing newline (`\n` or `\r\n`, as `echo` or an editor leaves it) is
/// stripped, anything else is kept as is.
///
/// ```no_run
/// let secret = seqfeed_transport::read_secret_file("/etc/seqfeed/secret".as_ref()).unwrap();
/// # let _ = secret;
/// ```
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |source| SecretFileError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o006 != 0 {
        return Err(SecretFileError::WorldAccessible {
            path: path.to_owned(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    let mut text = String::from_utf8(bytes).map_err(|_| SecretFileError::NotText {
        path: path.to_owned(),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn reads_strips_one_newline_and_refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ok = |name, bytes: &[u8]| read_secret_file(&file(d, name, bytes, 0o600)).unwrap();
        assert_eq!(ok("a", b"s3cret\n"), "s3cret");
        assert_eq!(ok("b", b"s3cret\r\n"), "s3cret");
        assert_eq!(ok("c", b"s3cret\n\n"), "s3cret\n");
        assert_eq!(ok("d", b" spaced "), " spaced ");
        assert_eq!(
            read_secret_file(&file(d, "g", b"x", 0o640)).unwrap(),
            "x",
            "group-readable is allowed"
        );
        let err = |p: PathBuf| read_secret_file(&p).unwrap_err().to_string();
        let e = err(file(d, "world", b"x", 0o644));
        assert!(
            e.contains("world") && e.contains("0644") && e.contains("chmod 600"),
            "{e}"
        );
        let e = err(file(d, "empty", b"\n", 0o600));
        assert!(e.contains("empty") && e.contains("is empty"), "{e}");
        let e = err(file(d, "bin", b"\xff\xfe", 0o600));
        assert!(e.contains("bin") && e.contains("UTF-8"), "{e}");
        let e = err(d.join("missing"));
        assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
    }
}
