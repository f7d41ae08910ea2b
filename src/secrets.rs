//! Encryption at rest for repository secrets (passwords, `env` values, URLs
//! that may carry credentials): XChaCha20-Poly1305 with a 32-byte key kept
//! in a file outside the database. Owns the key file and the sealed format;
//! never logs a key or a plaintext.
//!
//! Sealed format: `rm1:<key id>:<base64(nonce ‖ ciphertext)>`. The key id
//! (the first 8 bytes of the key's SHA-256, in hex) says which key sealed a
//! value, so a rotated-in key can tell old values from new ones. The field
//! name is bound in as associated data, so a password cannot be swapped in
//! as an `env` value by editing rows.
use std::{
    fmt,
    io::Write,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use sha2::{Digest, Sha256};

const PREFIX: &str = "rm1";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the secret key file {} is missing, but the database holds repository secrets sealed with a key ({key_ids}); restore that file (or point --secret-key-file / RM_SECRET_KEY_FILE at it). A new key would not open them, so none was made",
        path.display()
    )]
    KeyMissing { path: PathBuf, key_ids: String },
    #[error("cannot read the secret key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the secret key file {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secret key file {} must hold exactly {KEY_LEN} bytes (it holds {len}); it is not a restic-manager key",
        path.display()
    )]
    BadKey { path: PathBuf, len: usize },
    #[error("a stored secret is not in restic-manager's sealed format")]
    Malformed,
    #[error(
        "a stored secret was sealed with key {0}, not with the key in the secret key file: restore the matching key file"
    )]
    WrongKey(String),
    #[error("a stored secret failed its integrity check (tampered with, or another field's value)")]
    Tampered,
    #[error("the operating system's random number generator failed")]
    Random,
}

/// The server's secret key. `Debug` shows only the key id.
#[derive(Clone)]
pub struct SecretKey {
    key: [u8; KEY_LEN],
    id: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn key_id(key: &[u8; KEY_LEN]) -> String {
    hex::encode(&Sha256::digest(key)[..8])
}

impl SecretKey {
    pub fn from_bytes(key: [u8; KEY_LEN]) -> Self {
        SecretKey {
            id: key_id(&key),
            key,
        }
    }

    /// A fresh random key (tests, and the first start).
    pub fn generate() -> Result<Self, SecretError> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|_| SecretError::Random)?;
        Ok(Self::from_bytes(key))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Loads the key at `path`. When the file is missing: makes a new one
    /// (0600) if `sealed_key_ids` is empty, else refuses, naming the keys
    /// the database needs, because a new key could never open those values.
    pub fn load_or_create(path: &Path, sealed_key_ids: &[String]) -> Result<Self, SecretError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; KEY_LEN] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| SecretError::BadKey {
                            path: path.into(),
                            len: bytes.len(),
                        })?;
                Ok(Self::from_bytes(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !sealed_key_ids.is_empty() {
                    return Err(SecretError::KeyMissing {
                        path: path.into(),
                        key_ids: sealed_key_ids.join(", "),
                    });
                }
                let key = Self::generate()?;
                write_new_key(path, &key.key).map_err(|source| SecretError::Create {
                    path: path.into(),
                    source,
                })?;
                tracing::info!(path = %path.display(), key_id = %key.id, "created the secret key file");
                Ok(key)
            }
            Err(source) => Err(SecretError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Seals `plaintext` for the field `field` (associated data).
    pub fn seal(&self, field: &str, plaintext: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let cipher = XChaCha20Poly1305::new(&self.key.into());
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: field.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}:{}:{}", self.id, B64.encode(out)))
    }

    /// Opens a value sealed by [`seal`](Self::seal) for the same field.
    pub fn open(&self, field: &str, sealed: &str) -> Result<String, SecretError> {
        let (kid, data) = parse(sealed)?;
        if kid != self.id {
            return Err(SecretError::WrongKey(kid.to_string()));
        }
        let raw = B64.decode(data).map_err(|_| SecretError::Malformed)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Malformed)?;
        let cipher = XChaCha20Poly1305::new(&self.key.into());
        let plain = cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: field.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Tampered)?;
        String::from_utf8(plain).map_err(|_| SecretError::Tampered)
    }
}

fn parse(sealed: &str) -> Result<(&str, &str), SecretError> {
    let mut parts = sealed.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(PREFIX), Some(kid), Some(data)) if !kid.is_empty() => Ok((kid, data)),
        _ => Err(SecretError::Malformed),
    }
}

/// The key id a sealed value names, if it is one.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    parse(sealed).ok().map(|(kid, _)| kid)
}

/// Creates `path` with mode 0600 (never replacing an existing file).
fn write_new_key(path: &Path, key: &[u8; KEY_LEN]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::config::create_private_dir(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(key)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_field() {
        let key = SecretKey::generate().unwrap();
        let sealed = key.seal("password", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert!(sealed.starts_with(&format!("rm1:{}:", key.id())));
        assert_eq!(key.open("password", &sealed).unwrap(), "hunter2");
        // Same plaintext, fresh nonce.
        assert_ne!(sealed, key.seal("password", "hunter2").unwrap());
        assert!(matches!(
            key.open("env", &sealed),
            Err(SecretError::Tampered)
        ));
        let other = SecretKey::generate().unwrap();
        assert!(matches!(
            other.open("password", &sealed),
            Err(SecretError::WrongKey(_))
        ));
        let mut flipped = sealed.clone().into_bytes();
        let n = flipped.len() - 3;
        flipped[n] = if flipped[n] == b'A' { b'B' } else { b'A' };
        assert!(
            key.open("password", std::str::from_utf8(&flipped).unwrap())
                .is_err()
        );
        assert!(matches!(
            key.open("password", "plain text"),
            Err(SecretError::Malformed)
        ));
    }

    #[test]
    fn the_key_file_is_made_once_0600_and_never_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let a = SecretKey::load_or_create(&path, &[]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = SecretKey::load_or_create(&path, &[]).unwrap();
        assert_eq!(a.id(), b.id());
        std::fs::remove_file(&path).unwrap();
        let err = SecretKey::load_or_create(&path, &[a.id().to_string()]).unwrap_err();
        assert!(matches!(err, SecretError::KeyMissing { .. }));
        assert!(err.to_string().contains(a.id()));
        assert!(!path.exists());
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SecretKey::load_or_create(&path, &[]),
            Err(SecretError::BadKey { len: 5, .. })
        ));
    }

    #[test]
    fn debug_shows_the_id_only() {
        let key = SecretKey::from_bytes([7; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains(key.id()));
        assert!(!shown.contains("[7"));
    }
}
