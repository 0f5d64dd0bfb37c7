//! The cluster key: the secret every process of a job proves it holds in
//! the handshake, without sending it.
//!
//! It comes from `--cluster-key-file PATH` or the environment variable
//! [`KEY_ENV`]; without either, a fixed public default is used, which keeps
//! strangers that do not speak the handshake out but lets anyone who can
//! reach the port take part in it (see `docs/security.md`). So it is
//! refused when an address is not loopback, unless
//! [`Cluster::allow_public_key`](super::Cluster::allow_public_key).

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The environment variable that may hold the cluster key.
pub const KEY_ENV: &str = "TIDEMILL_CLUSTER_KEY";

/// The most bytes of a key file that are read; a larger file is refused.
pub const MAX_KEY_BYTES: u64 = 64 * 1024;

/// Keys shorter than this draw a warning.
const SHORT_KEY_BYTES: usize = 16;

/// Context string of the key derivation (BLAKE3 `derive_key`).
const CONTEXT: &str = "tidemill cluster handshake v1 key";

/// The secret behind the public default key.
const PUBLIC_DEFAULT: &[u8] = b"tidemill public default cluster key: not a secret";

/// A derived 32-byte key for BLAKE3's keyed mode. Its `Debug` shows where
/// it came from, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    key: [u8; blake3::KEY_LEN],
    public: bool,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.public {
            f.write_str("ClusterKey(public default)")
        } else {
            f.write_str("ClusterKey(secret)")
        }
    }
}

impl Default for ClusterKey {
    fn default() -> Self {
        ClusterKey::public_default()
    }
}

impl ClusterKey {
    /// The fixed public key used when no key is given.
    pub fn public_default() -> Self {
        ClusterKey {
            key: blake3::derive_key(CONTEXT, PUBLIC_DEFAULT),
            public: true,
        }
    }

    /// A key from secret bytes; trailing white space (a file's final
    /// newline) is ignored. `origin` names where the secret came from, for
    /// messages.
    pub fn from_secret(secret: &[u8], origin: &str) -> Result<Self> {
        let secret = secret.trim_ascii_end();
        if secret.is_empty() {
            return Err(Error::Usage {
                option: origin.to_string(),
                message: "the cluster key is empty".into(),
            });
        }
        if secret.len() < SHORT_KEY_BYTES {
            tracing::warn!(
                origin,
                bytes = secret.len(),
                "the cluster key is short; use at least {SHORT_KEY_BYTES} random bytes"
            );
        }
        Ok(ClusterKey {
            key: blake3::derive_key(CONTEXT, secret),
            public: false,
        })
    }

    /// Reads a key file (at most [`MAX_KEY_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        warn_if_shared(&file, path);
        let mut secret = Vec::new();
        file.take(MAX_KEY_BYTES + 1)
            .read_to_end(&mut secret)
            .map_err(|e| Error::io(path, e))?;
        if secret.len() as u64 > MAX_KEY_BYTES {
            return Err(Error::Usage {
                option: "--cluster-key-file".into(),
                message: format!(
                    "{} is larger than {MAX_KEY_BYTES} bytes; is it a key?",
                    path.display()
                ),
            });
        }
        Self::from_secret(&secret, "--cluster-key-file")
    }

    /// The key a process uses: the key file if given, else the value of
    /// [`KEY_ENV`] (passed in as `env`), else the public default.
    pub fn resolve(file: Option<&Path>, env: Option<OsString>) -> Result<Self> {
        match (file, env) {
            (Some(path), _) => Self::from_file(path),
            (None, Some(value)) => Self::from_secret(&value.into_encoded_bytes(), KEY_ENV),
            (None, None) => Ok(Self::public_default()),
        }
    }

    /// True for the public default key.
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// The keyed BLAKE3 hash of `parts`, each length-prefixed so that no
    /// two different part lists hash the same input.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        for part in parts {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize()
    }
}

/// Warns when a key file can be read by other users.
#[cfg(unix)]
fn warn_if_shared(file: &std::fs::File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata() {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the cluster key file is readable by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_file: &std::fs::File, _path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_secret_and_ignore_a_final_newline() {
        let a = ClusterKey::from_secret(b"correct horse battery staple\n", "test").unwrap();
        let b = ClusterKey::from_secret(b"correct horse battery staple", "test").unwrap();
        let c = ClusterKey::from_secret(b"correct horse battery stapler", "test").unwrap();
        assert_eq!(a.mac(&[b"x"]), b.mac(&[b"x"]));
        assert_ne!(a.mac(&[b"x"]), c.mac(&[b"x"]));
        assert_ne!(a.mac(&[b"x"]), ClusterKey::public_default().mac(&[b"x"]));
        assert!(ClusterKey::from_secret(b" \n", "test").is_err());
        assert_eq!(format!("{a:?}"), "ClusterKey(secret)");
    }

    #[test]
    fn parts_are_delimited() {
        let k = ClusterKey::public_default();
        assert_ne!(k.mac(&[b"ab", b"c"]), k.mac(&[b"a", b"bc"]));
    }
}
