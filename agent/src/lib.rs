//! The restic-manager agent as a library: wire protocol, config, enrollment
//! and the connection loop. The `restic-manager-agent` binary is a thin CLI
//! over it; the server reuses [`wire`], and integration tests drive real
//! agents in-process through `client::spawn`. `updater` replaces the
//! binary on the server's command and rolls a bad one back at boot;
//! `restic` runs restic jobs; `handler` routes commands to both.
//!
//! Everything but [`wire`], [`version`] and the two helpers below is behind
//! the default `client` feature; the server turns it off and so links only
//! the protocol.

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod config;
#[cfg(feature = "client")]
pub mod enroll;
#[cfg(feature = "client")]
pub(crate) mod files;
#[cfg(feature = "client")]
pub mod handler;
#[cfg(feature = "client")]
pub mod http;
#[cfg(feature = "client")]
pub mod restic;
#[cfg(feature = "client")]
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

/// Completes on SIGTERM (what supervisors send) or SIGINT (Ctrl-C): the
/// server's and the agent's clean stop.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process")
            }
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        // Without any signal handler the process can only be killed; keep
        // running rather than exiting at once.
        tracing::warn!(error = %e, "cannot listen for SIGINT either");
        std::future::pending::<()>().await;
    }
}
