//! Code shared by the `sidecar` and `spawner` binaries, and only that: the contract between them
//! (label and environment names in [`schema`]; one type per value that crosses from a label to a
//! sidecar, each with one parser and one rendering, in [`addr`], [`dns`], [`identity`], [`mode`],
//! [`parse`] and [`proto`]; what one sidecar is told, [`spec::SidecarSpec`]), logging setup, the capped
//! backoff both use for retries, the
//! one accept loop of every listener, the one reader of operator-named files ([`fs`]: bounded,
//! and never blocked by a FIFO), the admin listener ([`admin`]) and the Prometheus text it serves
//! ([`prometheus`]), log throttling, the shutdown signal, and the name of the socket a sidecar
//! hands its listeners over on ([`handover`]).

pub mod abstract_socket;
pub mod accept;
pub mod addr;
pub mod admin;
pub mod backoff;
pub mod dns;
pub mod fs;
pub mod handover;
pub mod identity;
pub mod mode;
pub mod parse;
pub mod prometheus;
pub mod proto;
pub mod schema;
pub mod service_identity;
pub mod shutdown;
pub mod spec;
pub mod telemetry;
pub mod throttle;
