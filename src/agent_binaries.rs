//! Staging agent binaries for download: copy into `<data-dir>/agent-binaries/`,
//! hash, learn the version the binary reports, record it. Also the os/arch
//! allow-list that keeps request parameters from ever naming a path.
use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};

use crate::store::agent_binaries::{self as store, AgentBinary};

pub const ALLOWED_OS: &[&str] = &["linux", "macos", "freebsd", "windows"];
pub const ALLOWED_ARCH: &[&str] = &["x86_64", "aarch64"];

/// The allow-listed (os, arch) as static strings, or None.
pub fn check_platform(os: &str, arch: &str) -> Option<(&'static str, &'static str)> {
    let os = ALLOWED_OS.iter().find(|o| **o == os)?;
    let arch = ALLOWED_ARCH.iter().find(|a| **a == arch)?;
    Some((os, arch))
}

pub fn binaries_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent-binaries")
}

/// File name for a staged binary; built only from allow-listed values.
fn file_name(os: &'static str, arch: &'static str) -> String {
    let ext = if os == "windows" { ".exe" } else { "" };
    format!("restic-manager-agent-{os}-{arch}{ext}")
}

pub fn staged_path(data_dir: &Path, b: &AgentBinary) -> PathBuf {
    binaries_dir(data_dir).join(&b.file_name)
}

/// Runs `<bin> --version` and parses `restic-manager-agent <version>`.
pub fn reported_version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or("").trim();
    match first.strip_prefix(agent::version::VERSION_PREFIX) {
        Some(v) if out.status.success() && !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => bail!(
            "{} --version printed {first:?}, not `restic-manager-agent <version>`: is it a restic-manager agent?",
            bin.display()
        ),
    }
}

/// Copies `src` into the staging directory (temp file, fsync, rename) and
/// returns its SHA-256 and size.
fn copy_hashed(src: &Path, dest: &Path) -> anyhow::Result<(String, u64)> {
    let dir = dest.parent().context("staging path has no parent")?;
    crate::config::create_private_dir(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dest.with_extension("tmp");
    let mut input =
        std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut out =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    let result = (|| -> anyhow::Result<()> {
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        out.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("copying {}", src.display())));
    }
    drop(out);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display()))?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Stages `src` for `os`/`arch`. The version is what the binary reports
/// (or `version` when given, for a binary that cannot run on this machine).
pub async fn stage_with_version(
    db: &DatabaseConnection,
    data_dir: &Path,
    src: &Path,
    os: &str,
    arch: &str,
    version: Option<String>,
) -> anyhow::Result<AgentBinary> {
    let (os, arch) = check_platform(os, arch).with_context(|| {
        format!(
            "unsupported platform {os}/{arch}: os must be one of {ALLOWED_OS:?}, arch one of {ALLOWED_ARCH:?}"
        )
    })?;
    let version = match version {
        Some(v) => v,
        None => reported_version(src)?,
    };
    let name = file_name(os, arch);
    let dest = binaries_dir(data_dir).join(&name);
    let src_owned = src.to_path_buf();
    let (sha256, size) =
        tokio::task::spawn_blocking(move || copy_hashed(&src_owned, &dest)).await??;
    let b = AgentBinary {
        os: os.to_string(),
        arch: arch.to_string(),
        version,
        sha256,
        size: size as i64,
        file_name: name,
        created_at: chrono::Utc::now().timestamp_millis(),
    };
    store::upsert(db, &b).await?;
    Ok(b)
}

pub async fn stage(
    db: &DatabaseConnection,
    data_dir: &Path,
    src: &Path,
    os: &str,
    arch: &str,
) -> anyhow::Result<AgentBinary> {
    stage_with_version(db, data_dir, src, os, arch, None).await
}

/// At start: stage the `restic-manager-agent` beside this executable when
/// nothing is staged for this machine's platform or what is staged is another
/// version than this server's, and the sibling reports the server's version.
/// So a server upgraded from A to B hands out B's agent without anyone
/// staging it by hand. The copy lands by rename: a download in flight keeps
/// reading the file it opened.
pub async fn stage_sibling(
    db: &DatabaseConnection,
    settings: &crate::config::Settings,
) -> anyhow::Result<()> {
    let (os, arch) = (std::env::consts::OS, std::env::consts::ARCH);
    if check_platform(os, arch).is_none() {
        return Ok(());
    }
    let server_version = crate::version::VERSION;
    let staged = store::get(db, os, arch).await?;
    if staged.as_ref().is_some_and(|b| b.version == server_version) {
        return Ok(());
    }
    let sibling = match &settings.sibling_agent {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().context("locating this executable")?;
            let name = if cfg!(windows) {
                "restic-manager-agent.exe"
            } else {
                "restic-manager-agent"
            };
            let Some(p) = exe.parent().map(|d| d.join(name)) else {
                return Ok(());
            };
            p
        }
    };
    if !sibling.is_file() {
        tracing::info!(path = %sibling.display(), "no agent binary beside the server to stage");
        return Ok(());
    }
    let sibling_version = {
        let p = sibling.clone();
        tokio::task::spawn_blocking(move || reported_version(&p)).await??
    };
    if sibling_version != server_version {
        tracing::warn!(
            path = %sibling.display(),
            sibling_version,
            server_version,
            staged = staged.as_ref().map(|b| b.version.as_str()),
            "the agent beside the server is another version: not staging it"
        );
        return Ok(());
    }
    let b = stage_with_version(
        db,
        &settings.data_dir,
        &sibling,
        os,
        arch,
        Some(sibling_version),
    )
    .await?;
    tracing::info!(
        version = %b.version,
        os,
        arch,
        sha256 = %b.sha256,
        replaced = staged.as_ref().map(|b| b.version.as_str()),
        "staged the sibling agent binary"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_platforms_are_refused() {
        assert!(check_platform("linux", "x86_64").is_some());
        for (os, arch) in [
            ("../../etc", "x86_64"),
            ("linux", "../passwd"),
            ("linux/../..", "x86_64"),
            ("", ""),
            ("Linux", "x86_64"),
            ("linux\0", "x86_64"),
        ] {
            assert!(check_platform(os, arch).is_none(), "{os}/{arch}");
        }
    }
}
