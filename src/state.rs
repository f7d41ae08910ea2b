//! Shared application state handed to every handler.
use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::{
    auth::LoginThrottle, clock::Clock, config::Settings, hub::Hub, jobs::LiveJobs,
    presence::Presence,
};

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub settings: Arc<Settings>,
    pub hub: Arc<Hub>,
    pub presence: Presence,
    pub live: Arc<LiveJobs>,
    pub clock: Clock,
    pub throttle: Arc<LoginThrottle>,
}
