//! The file names the certificate store, the sidecars' volumes and the sidecar's flags agree
//! on. The store is in certbot's layout, and an ACME-managed sidecar's certificate volume mirrors
//! it, so a pair the spawner obtained, one certbot made and one delivered into a sidecar are read
//! the same way. Names only: the store writes them ([`crate::acme::store`]), delivery copies them
//! into each sidecar ([`crate::certs::delivery`]), and the sidecar is pointed at them
//! ([`crate::plan::container`]).

/// A certbot pair under `live/<name>/`, and as a sidecar finds its own directly under the
/// certificate mount.
pub(crate) const CHAIN_FILE: &str = "fullchain.pem";
pub(crate) const KEY_FILE: &str = "privkey.pem";
/// The identity files, directly under [`shared::schema::IDENTITY_MOUNT`]: this sidecar's leaf
/// certificate and key, and the trust bundle of the identity CA.
pub(crate) const IDENTITY_CERT_FILE: &str = "cert.pem";
pub(crate) const IDENTITY_KEY_FILE: &str = "key.pem";
pub(crate) const IDENTITY_CA_FILE: &str = "ca.pem";
/// The HTTP-01 webroot, relative to the store (and, delivered, to a sidecar's `/certs`).
pub(crate) const HTTP01_DIR: &str = "acme/http-01";
/// The TLS-ALPN-01 challenge certificates, likewise.
pub(crate) const TLS_ALPN01_DIR: &str = "acme/tls-alpn-01";
/// Where an HTTP-01 answer lies under the webroot.
pub(crate) const HTTP01_TOKENS: &str = ".well-known/acme-challenge";
