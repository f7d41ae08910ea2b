//! Keeping the repository's secrets out of sight: the 0600 password file
//! restic reads, and the decoded URL password the log redactor hides.
use std::io;
use std::path::{Path, PathBuf};

/// The password, in a 0600 file inside a fresh 0700 directory; both are
/// removed when this is dropped (end of the run, error or cancel alike).
pub(super) struct PasswordFile {
    dir: tempfile::TempDir,
}

impl PasswordFile {
    pub(super) fn create(password: &str, parent: Option<&Path>) -> io::Result<Self> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("rm-restic-");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o700));
        }
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent)?,
            None => builder.tempdir()?,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(dir.path().join("password"))?;
        io::Write::write_all(&mut file, password.as_bytes())?;
        Ok(PasswordFile { dir })
    }

    pub(super) fn path(&self) -> PathBuf {
        self.dir.path().join("password")
    }
}

/// Percent-decoding of a URL's password (`%40` → `@`) for the redactor.
pub(super) fn urlencoding_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}
