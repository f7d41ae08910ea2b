//! Build-time version and commit, shared by the agent and the server.

/// `RM_VERSION` at build time, else the workspace package version.
pub const VERSION: &str = env!("RM_BUILD_VERSION");
/// `RM_COMMIT` at build time, else `git rev-parse --short HEAD`, else `unknown`.
pub const COMMIT: &str = env!("RM_BUILD_COMMIT");
/// The first line of `restic-manager-agent --version` is this plus the
/// version: the agent prints it, the updater and the server parse it.
pub const VERSION_PREFIX: &str = "restic-manager-agent ";
