//! What operators touch besides the `Cell` service.
//!
//! - [`config`] turns the command-line flags into a checked configuration;
//! - [`metrics`] serves Prometheus metrics;
//! - [`health`] adds gRPC health checking and server reflection to the
//!   client address;
//! - [`tls`] serves both ports over mutual TLS and says who a peer or a
//!   client is;
//! - [`certs`] makes a cell's CA and certificates (`gaios-server certs`).

pub mod certs;
pub mod config;
pub mod health;
pub mod metrics;
pub mod tls;
