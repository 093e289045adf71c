//! The contract between the spawner and the sidecar: environment variable names the sidecar reads
//! and container labels the spawner reads and writes. Both binaries use these constants so the two
//! can never disagree on a name.

/// Environment variables read by the sidecar (each also has a `--flag`).
pub mod env {
    pub const LISTEN: &str = "SIDECAR_LISTEN";
    pub const BACKEND: &str = "SIDECAR_BACKEND";
    pub const MODE: &str = "SIDECAR_MODE";
    pub const CERT: &str = "SIDECAR_CERT";
    pub const KEY: &str = "SIDECAR_KEY";
    pub const SELF_SIGNED_NAMES: &str = "SIDECAR_SELF_SIGNED_NAMES";
    pub const HANDSHAKE_TIMEOUT: &str = "SIDECAR_HANDSHAKE_TIMEOUT";
    pub const IDLE_TIMEOUT: &str = "SIDECAR_IDLE_TIMEOUT";
    pub const MAX_CONNECTIONS: &str = "SIDECAR_MAX_CONNECTIONS";
    pub const MAX_CONNECTIONS_PER_IP: &str = "SIDECAR_MAX_CONNECTIONS_PER_IP";
    pub const MAX_HANDSHAKES: &str = "SIDECAR_MAX_HANDSHAKES";
    pub const LISTEN_BACKLOG: &str = "SIDECAR_LISTEN_BACKLOG";
    pub const WORKERS: &str = "SIDECAR_WORKERS";
    pub const ALLOW_UPGRADE: &str = "SIDECAR_ALLOW_UPGRADE";
    pub const SHUTDOWN_GRACE: &str = "SIDECAR_SHUTDOWN_GRACE";
    pub const ADMIN_LISTEN: &str = "SIDECAR_ADMIN_LISTEN";
    pub const LOG_FORMAT: &str = "SIDECAR_LOG_FORMAT";
    pub const CONNECT_TIMEOUT: &str = "SIDECAR_CONNECT_TIMEOUT";
    pub const BACKEND_TIMEOUT: &str = "SIDECAR_BACKEND_TIMEOUT";
    pub const HEADER_READ_TIMEOUT: &str = "SIDECAR_HEADER_READ_TIMEOUT";
    pub const REDIRECT_LISTEN: &str = "SIDECAR_REDIRECT_LISTEN";
    pub const REDIRECT_PORT: &str = "SIDECAR_REDIRECT_PORT";
    pub const ACME_WEBROOT: &str = "SIDECAR_ACME_WEBROOT";
    /// HTTP-01 answered without files: `<token>.<thumbprint>` for the account of this
    /// thumbprint (RFC 7638, SHA-256, base64url).
    pub const ACME_THUMBPRINT: &str = "SIDECAR_ACME_THUMBPRINT";
    /// TLS-ALPN-01 challenge certificates, `<dir>/<name>.pem`.
    pub const ACME_TLS_ALPN_DIR: &str = "SIDECAR_ACME_TLS_ALPN_DIR";
    pub const HSTS: &str = "SIDECAR_HSTS";
    pub const HSTS_INCLUDE_SUBDOMAINS: &str = "SIDECAR_HSTS_INCLUDE_SUBDOMAINS";
    /// http mode: `true` also serves HTTP/3 (QUIC) on UDP at the TLS listener's address.
    pub const HTTP3: &str = "SIDECAR_HTTP3";
    /// http mode: the port `Alt-Svc` advertises for HTTP/3 (a published UDP port that differs).
    pub const HTTP3_ADVERTISE_PORT: &str = "SIDECAR_HTTP3_ADVERTISE_PORT";
    /// tcp mode: ALPN protocols offered, in preference order.
    pub const ALPN: &str = "SIDECAR_ALPN";
    /// The TLS key-exchange groups agreed, in preference order (IANA names).
    pub const TLS_GROUPS: &str = "SIDECAR_TLS_GROUPS";
    /// tcp mode: `off`, `v1` or `v2`: the PROXY protocol header sent to the backend.
    pub const PROXY_PROTOCOL: &str = "SIDECAR_PROXY_PROTOCOL";
    /// http mode: `auto`, `http1` or `h2c`: the HTTP version spoken to the backend.
    pub const BACKEND_PROTOCOL: &str = "SIDECAR_BACKEND_PROTOCOL";
    /// `true`: exit 0 once the network namespace loses every interface but `lo` (its container
    /// is gone). The spawner sets it for targets with a network of their own.
    pub const EXIT_WHEN_ORPHANED: &str = "SIDECAR_EXIT_WHEN_ORPHANED";

    pub const CERTS_DIR: &str = "SIDECAR_CERTS_DIR";
    pub const RELOAD_INTERVAL: &str = "SIDECAR_RELOAD_INTERVAL";
    pub const CLIENT_CA: &str = "SIDECAR_CLIENT_CA";
    pub const CLIENT_AUTH: &str = "SIDECAR_CLIENT_AUTH";
    pub const CLIENT_CRL: &str = "SIDECAR_CLIENT_CRL";
    pub const ALLOW_CN: &str = "SIDECAR_ALLOW_CN";
    pub const ALLOW_DNS_SAN: &str = "SIDECAR_ALLOW_DNS_SAN";
    pub const ALLOW_URI_SAN: &str = "SIDECAR_ALLOW_URI_SAN";

    /// Service identity (spawner `--identity-domain`): this sidecar's identity certificate and
    /// key (served to clients whose SNI names it, presented on every upstream call), the trust
    /// bundle upstream servers are verified against, and the trust domain of their SPIFFE IDs.
    pub const IDENTITY_CERT: &str = "SIDECAR_IDENTITY_CERT";
    pub const IDENTITY_KEY: &str = "SIDECAR_IDENTITY_KEY";
    pub const IDENTITY_CA: &str = "SIDECAR_IDENTITY_CA";
    pub const IDENTITY_DOMAIN: &str = "SIDECAR_IDENTITY_DOMAIN";
    /// Egress relays, a comma list of `LOCAL=[NAME@]HOST:PORT` (`--upstream`, repeatable).
    pub const UPSTREAMS: &str = "SIDECAR_UPSTREAMS";
    /// Take the listeners over from the sidecar running on the same listen address.
    pub const TAKE_OVER: &str = "SIDECAR_TAKE_OVER";
    /// Bound on the whole take-over.
    pub const TAKE_OVER_TIMEOUT: &str = "SIDECAR_TAKE_OVER_TIMEOUT";

    /// gosslterm's names, accepted as aliases so its users can switch without changes: each is
    /// read only when the `SIDECAR_*` variable (or flag) it stands for is not given.
    pub const GOSSLTERM_FRONTEND_ADDR: &str = "GOSSLTERM_FRONTEND_ADDR";
    pub const GOSSLTERM_BACKEND_ADDR: &str = "GOSSLTERM_BACKEND_ADDR";
    /// Alias of [`CERT`].
    pub const GOSSLTERM_CERT: &str = "GOSSLTERM_CERT";
    /// Alias of [`KEY`].
    pub const GOSSLTERM_KEY: &str = "GOSSLTERM_KEY";
    /// gosslterm's log level (`trace`, `debug`, `info`, `warn`, `error`): the sidecar's level
    /// when `RUST_LOG` is unset. The sidecar's alone: the spawner does not read it.
    pub const LOG_LEVEL: &str = "LOG_LEVEL";
}

/// Where the spawner mounts certificates inside a sidecar; labels name files under it.
pub const CERTS_MOUNT: &str = "/certs";

/// Where the spawner delivers a sidecar's identity (certificate, key, trust bundle): a volume of
/// that sidecar alone.
pub const IDENTITY_MOUNT: &str = "/identity";

/// Value of the `managed-by` label on every sidecar the spawner creates.
pub const MANAGED_BY_SPAWNER: &str = "spawner";

/// Default label prefix; `--label-prefix` on the spawner changes it.
pub const DEFAULT_LABEL_PREFIX: &str = "tls-sidecar";

/// byfahrer's opt-in label, accepted as an alias of `<prefix>.proxy-image`.
pub const BYFAHRER_PROXY_IMAGE_LABEL: &str = "org.qnib.byfahrer.proxy-image";

/// Label suffixes (the full label is `<prefix>.<suffix>`).
pub mod label {
    /// On a target: the sidecar image it asks for. The opt-in.
    pub const PROXY_IMAGE: &str = "proxy-image";
    pub const LISTEN: &str = "listen";
    pub const BACKEND: &str = "backend";
    pub const MODE: &str = "mode";
    /// On a target: the names its certificate is for, a comma list (the first names certbot's
    /// `live/<name>/` directory); with ACME on, what the spawner obtains a certificate for.
    pub const HOSTNAME: &str = "hostname";
    /// On a target: `http-01` or `tls-alpn-01`, how ACME proves control of its names.
    pub const ACME_CHALLENGE: &str = "acme-challenge";
    /// On a target: PEM bundle of client CAs under `/certs`; turns on mutual TLS.
    pub const CLIENT_CA: &str = "client-ca";
    /// On a target: `required` or `optional` client certificates (with `client-ca`).
    pub const CLIENT_AUTH: &str = "client-auth";
    /// On a target: comma lists of admitted client identities (with `client-ca`).
    pub const ALLOW_CN: &str = "allow-cn";
    pub const ALLOW_DNS_SAN: &str = "allow-dns-san";
    pub const ALLOW_URI_SAN: &str = "allow-uri-san";
    /// On a target (spawner `--identity-domain`): its service name, the `NAME` of its identity
    /// `spiffe://<domain>/NAME` [default: the Compose service name, else the container name].
    pub const IDENTITY: &str = "identity";
    /// On a target: comma list of service names admitted as clients (`*`: any identity of the
    /// domain); turns on mutual TLS against the identity CA.
    pub const ALLOW_IDENTITIES: &str = "allow-identities";
    /// On a target: comma list of egress relays `LOCAL=[NAME@]HOST:PORT` its app calls in plain.
    pub const UPSTREAMS: &str = "upstreams";
    /// On a target: plain-HTTP listener in its namespace that redirects to HTTPS.
    pub const REDIRECT_LISTEN: &str = "redirect-listen";
    /// On a target: HSTS max-age (seconds or `<n>[smhdwy]`).
    pub const HSTS: &str = "hsts";
    /// On a target (mode http): `true` also serves HTTP/3 on UDP at the sidecar's port.
    pub const HTTP3: &str = "http3";
    /// On a target: the port `Alt-Svc` advertises for HTTP/3 (the published UDP port).
    pub const HTTP3_ADVERTISE_PORT: &str = "http3-advertise-port";
    /// On a target (mode tcp): ALPN protocols the sidecar offers, e.g. `h2,http/1.1`.
    pub const ALPN: &str = "alpn";
    /// On a target: the TLS key-exchange groups its sidecar agrees, in preference order, e.g.
    /// `X25519MLKEM768` to refuse clients without post-quantum key exchange.
    pub const TLS_GROUPS: &str = "tls-groups";
    /// On a target (mode tcp): `off`, `v1` or `v2`: PROXY protocol header to the backend.
    pub const PROXY_PROTOCOL: &str = "proxy-protocol";
    /// On a target (mode http): `auto`, `http1` or `h2c`: HTTP version to the backend.
    pub const BACKEND_PROTOCOL: &str = "backend-protocol";
    /// On a target: `auto` or `manual`, overriding the spawner's `--rollout` for this target
    /// (`manual` opts it out of automatic roll-outs: only `spawner rollout` replaces its sidecar).
    pub const ROLLOUT: &str = "rollout";
    /// On a sidecar: the full ID of the target it serves.
    pub const SIDECAR_FOR: &str = "sidecar-for";
    /// On a sidecar: who created it (always `spawner`).
    pub const MANAGED_BY: &str = "managed-by";
    /// On a sidecar: the target's `State.StartedAt` when the sidecar was created, i.e. which of
    /// the target's network namespaces it joined; a mismatch means the target restarted since.
    pub const TARGET_STARTED: &str = "target-started";
    /// On a sidecar: exit code of the previous sidecar of the same target, when that one failed
    /// (empty when the engine refused to start it), so `spawner status` can show why after the
    /// failed container is gone.
    pub const LAST_EXIT_CODE: &str = "last-exit-code";
    /// On a sidecar: the last stderr line of that failed predecessor (escaped, bounded).
    pub const LAST_ERROR: &str = "last-error";
    /// On a sidecar: the digest of the container the spawner rendered for it (everything but
    /// its image and labels), so a later spawner sees whether it would render another one.
    pub const SPEC_DIGEST: &str = "spec-digest";
    /// On a sidecar made by a roll-out: the full ID of the sidecar it takes over from.
    pub const REPLACES: &str = "replaces";
}

/// Full label name for a suffix under a prefix: `label_name("tls-sidecar", "mode")` is `tls-sidecar.mode`.
pub fn label_name(prefix: &str, suffix: &str) -> String {
    format!("{prefix}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_join_prefix_and_suffix() {
        assert_eq!(
            label_name(DEFAULT_LABEL_PREFIX, label::PROXY_IMAGE),
            "tls-sidecar.proxy-image"
        );
    }
}
