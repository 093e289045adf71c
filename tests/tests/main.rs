//! All integration tests compile into this one binary and share the harness.
mod churn;
mod engine;
mod sidecar_admin;
mod sidecar_certs;
mod sidecar_config;
mod sidecar_docker;
mod sidecar_hostile;
mod sidecar_http;
mod sidecar_limits;
mod sidecar_mtls;
mod sidecar_redirect;
mod sidecar_shutdown;
mod sidecar_smuggling;
mod sidecar_tcp;
mod sidecar_tls;
mod spawner;
mod spawner_hygiene;
