//! The restic-manager agent as a library: wire protocol, config, enrollment
//! and the connection loop. The `restic-manager-agent` binary is a thin CLI
//! over it; the server reuses [`wire`], and integration tests drive real
//! agents in-process through [`client::spawn`]. [`updater`] replaces the
//! binary on the server's command and rolls a bad one back at boot;
//! [`restic`] runs restic jobs; [`handler`] routes commands to both.

pub mod client;
pub mod config;
pub mod enroll;
pub mod handler;
pub mod restic;
pub mod updater;
pub mod version;
pub mod wire;

/// Selects rustls' *ring* backend as the process-wide crypto provider.
///
/// rustls panics on the first TLS handshake when it cannot pick a provider
/// by itself, which happens as soon as a workspace build unifies features so
/// that more than one backend is compiled in. Every entry point that may open
/// a TLS connection calls this; calling it again, or after someone else has
/// installed a provider, is harmless.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race against another installer is fine: any provider
        // being installed is all that matters.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
