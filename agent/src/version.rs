//! Build-time version and commit, shared by the agent and the server.

/// `RM_VERSION` at build time, else the workspace package version.
pub const VERSION: &str = env!("RM_BUILD_VERSION");
/// `RM_COMMIT` at build time, else `git rev-parse --short HEAD`, else `unknown`.
pub const COMMIT: &str = env!("RM_BUILD_COMMIT");
