//! tcp-balancer

pub mod config;
