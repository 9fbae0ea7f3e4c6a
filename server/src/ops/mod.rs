//! What operators touch besides the `Cell` service.
//!
//! - [`config`] turns the command-line flags into a checked configuration;
//! - [`metrics`] serves Prometheus metrics;
//! - [`health`] adds gRPC health checking and server reflection to the
//!   client address.

pub mod config;
pub mod health;
pub mod metrics;
