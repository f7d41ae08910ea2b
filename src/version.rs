//! Build-time version and commit; one source for both binaries (the agent
//! crate stamps them, see agent/build.rs).
pub use agent::version::{COMMIT, VERSION};
