//! Who this agent says it is in `agent.hello`.

use crate::version;
use crate::wire::{Hello, UpdateReport};

use super::HelloStatus;

/// Who this agent says it is in `agent.hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    pub hostname: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            agent_version: version::VERSION.to_string(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            hostname: local_hostname(),
        }
    }
}

impl Identity {
    pub(super) fn hello(&self, update: Option<UpdateReport>, status: HelloStatus) -> Hello {
        Hello {
            agent_version: self.agent_version.clone(),
            os: self.os.clone(),
            arch: self.arch.clone(),
            hostname: self.hostname.clone(),
            update,
            restic_version: status.restic_version,
            running_jobs: status.running_jobs,
            recent_finished: status.recent_finished,
        }
    }
}

/// This machine's hostname without a syscall wrapper crate: `/etc/hostname`,
/// the kernel's view, then `$HOSTNAME`/`%COMPUTERNAME%`, else `unknown`.
pub fn local_hostname() -> String {
    fn from_file(path: &str) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
    }
    fn from_env(name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }
    from_file("/etc/hostname")
        .or_else(|| from_file("/proc/sys/kernel/hostname"))
        .or_else(|| from_env("HOSTNAME"))
        .or_else(|| from_env("COMPUTERNAME"))
        .unwrap_or_else(|| "unknown".to_string())
}
