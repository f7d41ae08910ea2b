//! Stamps the build-time version and commit shared by both binaries.
//! `RM_VERSION` wins, else the package version; `RM_COMMIT` wins, else
//! `git rev-parse --short HEAD`, else `unknown`.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RM_VERSION");
    println!("cargo:rerun-if-env-changed=RM_COMMIT");
    let version = std::env::var("RM_VERSION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "dev".into()));
    let commit = std::env::var("RM_COMMIT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RM_BUILD_VERSION={}", version.trim());
    println!("cargo:rustc-env=RM_BUILD_COMMIT={}", commit.trim());
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}
