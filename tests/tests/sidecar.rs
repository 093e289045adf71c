//! The sidecar binary: each module starts it as a process on loopback (or its image on the real
//! engine, `docker`) and tests one of its concerns from the outside, with real clients and
//! backends.
mod acme_alpn;
mod admin;
mod certs;
mod ciphers;
mod config;
mod docker;
mod fast_path;
mod groups;
mod grpc;
mod h2c;
mod hostile;
mod http;
mod http3;
mod identity;
mod limits;
mod memory;
mod mtls;
mod redirect;
mod shutdown;
mod smuggling;
mod takeover;
mod tcp;
mod tcp_proto;
mod tls;
