//! The reload pipeline: [`state`] decides (pure), [`driver`] carries it out with processes.

pub mod driver;
pub mod state;
