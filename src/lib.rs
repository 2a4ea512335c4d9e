//! pika: a clustered configuration store. This crate is the server binary's
//! library half: configuration, the HTTP API and the wiring of a node.
//! The replicated state lives in `pika-replication`, peers in
//! `pika-membership`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod node;
pub mod telemetry;
pub mod tls;
