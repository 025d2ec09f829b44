//! dhcp-dns

pub mod config;
