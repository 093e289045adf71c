//! Code shared by the `sidecar` and `spawner` binaries, and only that: the label and environment
//! schema that ties the two together, logging setup, the shutdown signal and small value parsers.

pub mod dns;
pub mod parse;
pub mod schema;
pub mod shutdown;
pub mod telemetry;
