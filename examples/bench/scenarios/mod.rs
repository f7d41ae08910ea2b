//! One module per measured item of issues 6 and 15; each returns its table rows.
pub mod agents;
pub mod backup;
pub mod backups;
pub mod dashboard;
pub mod downloads;
pub mod footprint;
pub mod history;
pub mod history_seed;
pub mod logs;
pub mod rolling;
pub mod wave;
