//! Wiring: builds every component from the configuration, connects them with
//! bounded channels, runs them, and shuts them down in order.

pub mod tracker;
