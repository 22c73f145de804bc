//! A TURN relay (RFC 8656 over UDP) that stands in for coturn: the clients NetBird deployments
//! use (pion/ice, coturn's own) allocate, permit, bind channels and relay through it with the
//! credentials they already have.

pub mod auth;
pub mod client;
pub mod config;
pub mod fast_path;
pub mod message;
pub mod server;
