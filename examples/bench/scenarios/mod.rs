//! One module per measured item of issue 6; each returns its table rows.
pub mod agents;
pub mod backup;
pub mod dashboard;
pub mod downloads;
pub mod footprint;
pub mod logs;
pub mod rolling;
