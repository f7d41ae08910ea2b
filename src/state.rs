//! Shared application state handed to every handler.
use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::{
    auth::LoginThrottle, clock::Clock, config::Settings, hub::Hub, jobs::LiveJobs,
    presence::Presence, updates::Updates,
};

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub settings: Arc<Settings>,
    pub hub: Arc<Hub>,
    pub presence: Presence,
    pub live: Arc<LiveJobs>,
    /// Agents' log lines, stored in groups (`jobs::log_batch`).
    pub logs: crate::jobs::log_batch::Shared,
    /// Agents' `job.started` and `job.finished`, recorded in groups
    /// (`jobs::event_batch`).
    pub job_events: crate::jobs::event_batch::Shared,
    pub deadlines: Arc<crate::jobs::Deadlines>,
    pub updates: Arc<Updates>,
    pub fleet: Arc<crate::fleet::Fleet>,
    pub clock: Clock,
    pub throttle: Arc<LoginThrottle>,
    pub alerts: crate::alerts::Alerts,
    /// Seals and opens repository secrets; never logged.
    pub secrets: Arc<crate::secrets::SecretKey>,
    pub restic: Arc<crate::restic::Restic>,
    /// Open live log streams per user (the cap in `web::job_events`).
    pub streams: Arc<crate::web::job_events::Streams>,
    /// Per client address, for the unauthenticated agent endpoints.
    pub agent_requests: Arc<crate::web::AgentRequestLimiter>,
    /// Hosts that may have an open alert or a live job a hello settles.
    pub marks: Arc<crate::agents::marks::HostMarks>,
    /// Agent secrets known to be good.
    pub agent_secrets: Arc<crate::agents::secret_cache::SecretCache>,
    /// Turns at SQLite's write lock for the bulk writers (`store::gate`).
    pub write_gate: Arc<crate::store::gate::WriteGate>,
}
