//! What a sidecar container looks like: the create request for one target. Pure, so the security
//! settings are asserted in unit tests.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, RestartPolicy, RestartPolicyNameEnum,
};
use shared::addr::ListenAddr;
use shared::dns::{DnsName, SanName};
use shared::identity::{Identities, List, UriPattern};
use shared::mode::ClientAuthMode;
use shared::schema::{env, label, label_name, CERTS_MOUNT, IDENTITY_MOUNT, MANAGED_BY_SPAWNER};
use shared::service_identity::TrustDomain;
use shared::spec::{Certificate, ClientAuth, Http3, IdentityFiles, SidecarSpec};

use crate::config::{CertsSource, Config};
use crate::layout::{
    CHAIN_FILE, HTTP01_DIR, IDENTITY_CA_FILE, IDENTITY_CERT_FILE, IDENTITY_KEY_FILE, KEY_FILE,
    TLS_ALPN01_DIR,
};
use crate::plan::labels::{Admitted, ChallengeKind, TargetSpec};

/// The unprivileged user the sidecar runs as (`nobody`).
pub(crate) const SIDECAR_USER: &str = "65534:65534";
/// Extra stop timeout on top of the sidecar's shutdown grace, so Docker's SIGKILL never cuts a drain.
const STOP_TIMEOUT_MARGIN_SECS: i64 = 2;

/// The target a sidecar is for.
pub(crate) struct For<'a> {
    pub(crate) id: &'a str,
    pub(crate) started_at: &'a str,
    pub(crate) spec: &'a TargetSpec,
}

/// Certificate paths inside the sidecar for a hostname (certbot layout).
pub(crate) fn cert_paths(hostname: &DnsName) -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(format!("{CERTS_MOUNT}/live/{hostname}"));
    (dir.join("fullchain.pem"), dir.join("privkey.pem"))
}

/// Where an ACME-managed sidecar finds the challenge answers the spawner delivers: the store's
/// own layout ([`crate::acme::store`]) under the certificate mount.
pub(crate) fn acme_webroot() -> PathBuf {
    PathBuf::from(CERTS_MOUNT).join(HTTP01_DIR)
}

/// See [`acme_webroot`]: TLS-ALPN-01 challenge certificates.
pub(crate) fn acme_tls_alpn_dir() -> PathBuf {
    PathBuf::from(CERTS_MOUNT).join(TLS_ALPN01_DIR)
}

/// The plain-HTTP port HTTP-01 is validated on: the CA always asks port 80 of the name.
const HTTP01_PORT: u16 = 80;

/// Whether the spawner obtains this target's certificate by ACME: ACME is on and the target
/// named its certificate's names in a `hostname` label.
pub(crate) fn acme_managed(cfg: &Config, target: &TargetSpec) -> bool {
    cfg.acme.is_some() && target.hostname_labelled
}

/// What this spawner gives its sidecars, which some labels need.
pub(crate) fn offered(cfg: &Config) -> crate::plan::labels::Offered {
    crate::plan::labels::Offered {
        certs: cfg.certs.is_some(),
        identity: identity_domain(cfg).is_some(),
        acme: cfg.acme.as_ref().map(|a| crate::plan::labels::AcmeOffer {
            default_challenge: a.challenge,
            dns: a.dns.is_some(),
        }),
    }
}

/// The trust domain of the identities this spawner issues, when it issues them.
pub(crate) fn identity_domain(cfg: &Config) -> Option<&TrustDomain> {
    cfg.identity.as_ref().map(|i| &i.domain)
}

/// Where a sidecar finds its identity files (delivered into its own volume).
fn identity_files(domain: &TrustDomain) -> IdentityFiles {
    let at = |file: &str| PathBuf::from(IDENTITY_MOUNT).join(file);
    IdentityFiles {
        cert: at(IDENTITY_CERT_FILE),
        key: at(IDENTITY_KEY_FILE),
        ca: at(IDENTITY_CA_FILE),
        domain: domain.clone(),
    }
}

/// `allow-identities` as the sidecar's mutual TLS: client certificates from the identity CA,
/// required, with one of the admitted SPIFFE IDs.
fn identity_client_auth(domain: &TrustDomain, admit: &Admitted) -> ClientAuth {
    let pattern = |name: &str| {
        format!("spiffe://{domain}/{name}")
            .parse::<UriPattern>()
            .unwrap_or_else(|e| unreachable!("a trust domain and a service name make a URI: {e}"))
    };
    let uri = match admit {
        Admitted::Any => vec![pattern("*")],
        Admitted::Only(names) => names.iter().map(|n| pattern(n.as_str())).collect(),
    };
    ClientAuth {
        ca: PathBuf::from(IDENTITY_MOUNT).join(IDENTITY_CA_FILE),
        mode: ClientAuthMode::Required,
        allow: Identities {
            uri: List(uri),
            ..Identities::default()
        },
    }
}

/// The names of a self-signed certificate for `target`: its names, `localhost` and `127.0.0.1`
/// (so probes from inside the namespace verify too).
fn self_signed_names(target: &TargetSpec) -> Vec<SanName> {
    let mut names: Vec<SanName> = Vec::new();
    let extra = ["localhost", "127.0.0.1"]
        .into_iter()
        .filter_map(|n| n.parse().ok());
    // As the sidecar reads it back: a hostname that is an IPv4 literal (`10.0.0.1`, a valid DNS
    // name) is an IP address SAN.
    let own = target
        .names()
        .map(|n| n.to_string().parse::<SanName>().unwrap_or_else(|_| n.san()));
    for name in own.chain(extra) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// What the sidecar for `target` is told. `use_certs`: the certificate files for the hostname
/// exist under the mount; otherwise a self-signed certificate (`self_signed_names`). An
/// ACME-managed target's sidecar reads its certificate directory instead, so the obtained pair
/// is served the moment it is delivered, and answers the challenges its kind needs.
pub fn sidecar_spec(cfg: &Config, target: &TargetSpec, use_certs: bool) -> SidecarSpec {
    let acme = acme_managed(cfg, target);
    let certificate = if acme {
        Certificate::Dir {
            dir: PathBuf::from(CERTS_MOUNT),
            names: self_signed_names(target),
        }
    } else if use_certs {
        let (cert, key) = match &cfg.certs {
            // Delivered into the sidecar's own volume (crate::certs::delivery).
            Some(CertsSource::HostDir(_)) => {
                let mount = PathBuf::from(CERTS_MOUNT);
                (mount.join(CHAIN_FILE), mount.join(KEY_FILE))
            }
            _ => cert_paths(&target.hostname),
        };
        Certificate::Files { cert, key }
    } else {
        Certificate::SelfSigned {
            names: self_signed_names(target),
        }
    };
    let http01 = acme && target.acme_challenge == ChallengeKind::Http01;
    let tls_alpn01 = acme && target.acme_challenge == ChallengeKind::TlsAlpn01;
    let redirect_listen = match target.redirect_listen {
        None if http01 => Some(ListenAddr::any(HTTP01_PORT)),
        other => other,
    };
    let identity = identity_domain(cfg).zip(target.identity.as_ref());
    let identity_auth = identity.and_then(|(domain, id)| {
        id.admit
            .as_ref()
            .map(|admit| identity_client_auth(domain, admit))
    });
    SidecarSpec {
        listen: target.listen,
        backend: target.backend.clone(),
        mode: target.mode,
        certificate,
        client_auth: target
            .mtls
            .as_ref()
            .map(|m| ClientAuth {
                ca: PathBuf::from(m.ca.as_str()),
                mode: m.auth,
                allow: m.allow.clone(),
            })
            .or(identity_auth),
        redirect_listen,
        hsts: target.hsts,
        http3: target.http3.map(|h3| http3(target, h3)),
        backend_protocol: target.backend_protocol,
        alpn: target.alpn.clone(),
        proxy_protocol: target.proxy_protocol,
        tls_groups: target.tls_groups.clone(),
        // Whole seconds, at least one: the engine's stop timeout is in seconds.
        shutdown_grace: std::time::Duration::from_secs(cfg.sidecar_shutdown_grace.as_secs().max(1)),
        log_format: cfg.log_format,
        exit_when_orphaned: target.exit_when_orphaned,
        acme_webroot: http01.then(acme_webroot),
        acme_tls_alpn_dir: tls_alpn01.then(acme_tls_alpn_dir),
        identity: identity.map(|(domain, _)| identity_files(domain)),
        upstreams: identity
            .map(|(_, id)| id.upstreams.clone())
            .unwrap_or_default(),
    }
}

/// HTTP/3 as the sidecar is told it: the port `Alt-Svc` advertises is the label's, else the
/// host port the target publishes the listen port on over UDP (clients that learn of HTTP/3
/// from a TCP response must reach the UDP listener where the engine forwards it, not at the
/// port inside the namespace). Neither, or a published port that is the listener's own: the
/// sidecar advertises its own port.
fn http3(target: &TargetSpec, asked: Http3) -> Http3 {
    let published = target
        .published_udp_port
        .filter(|p| p.get() != target.listen.port());
    Http3 {
        advertise_port: asked.advertise_port.or(published),
    }
}

/// The create request. `use_certs`: the certificate files for the hostname exist under the mount.
pub(crate) fn sidecar_body(cfg: &Config, target: &For<'_>, use_certs: bool) -> ContainerCreateBody {
    let spec = target.spec;
    let grace = cfg.sidecar_shutdown_grace;
    let envs = sidecar_spec(cfg, spec, use_certs).to_env_strings();
    let labels = HashMap::from([
        (
            label_name(&cfg.label_prefix, label::SIDECAR_FOR),
            target.id.to_string(),
        ),
        (
            label_name(&cfg.label_prefix, label::MANAGED_BY),
            MANAGED_BY_SPAWNER.to_string(),
        ),
        (
            label_name(&cfg.label_prefix, label::TARGET_STARTED),
            target.started_at.to_string(),
        ),
    ]);
    let mut mounts: Vec<Mount> = cfg
        .certs
        .iter()
        .map(|c| match c {
            // A volume of this sidecar alone (removed with it), into which the spawner delivers
            // this target's files: never the store itself.
            CertsSource::HostDir(_) => Mount {
                target: Some(CERTS_MOUNT.to_string()),
                typ: Some(MountType::VOLUME),
                read_only: Some(false),
                ..Default::default()
            },
            // A named volume the spawner cannot read: mounted whole, read-only (see the docs'
            // threat model; a directory is the recommended form).
            CertsSource::Volume(v) => Mount {
                target: Some(CERTS_MOUNT.to_string()),
                source: Some(v.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(true),
                ..Default::default()
            },
        })
        .collect();
    if identity_domain(cfg).is_some() {
        // This sidecar's identity, in a volume of its own (removed with it): its key is never
        // in an environment variable, a label or another sidecar's volume.
        mounts.push(Mount {
            target: Some(IDENTITY_MOUNT.to_string()),
            typ: Some(MountType::VOLUME),
            read_only: Some(false),
            ..Default::default()
        });
    }
    let mounts = (!mounts.is_empty()).then_some(mounts);
    let mut body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(SIDECAR_USER.to_string()),
        env: Some(envs),
        labels: Some(labels),
        stop_timeout: Some(grace.as_secs() as i64 + STOP_TIMEOUT_MARGIN_SECS),
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{}", target.id)),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges:true".to_string()]),
            memory: Some(cfg.sidecar_memory),
            pids_limit: Some(cfg.sidecar_pids_limit),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            mounts,
            ..Default::default()
        }),
        ..Default::default()
    };
    let digest = spec_digest(&body);
    if let Some(labels) = body.labels.as_mut() {
        labels.insert(label_name(&cfg.label_prefix, label::SPEC_DIGEST), digest);
    }
    body
}

/// The digest of a sidecar's container as rendered (its `spec-digest` label): everything but its
/// image, compared by ID instead, and its labels, which say where things came from rather than
/// what the sidecar does. A spawner that would render a running sidecar differently (another
/// version, a changed flag) sees it outdated. The rendering is deterministic: the environment is
/// a list in a fixed order, and the request holds no map once the labels are out.
pub(crate) fn spec_digest(body: &ContainerCreateBody) -> String {
    let mut rendered = body.clone();
    rendered.image = None;
    rendered.labels = None;
    // Serialising plain data cannot fail; an empty rendering would only make every sidecar
    // look outdated, never hide a change.
    let bytes = serde_json::to_vec(&rendered).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The create request of a replacement for sidecar `old` (a roll-out): the sidecar `target`
/// gets today, told to take the listeners over from `old` within `timeout`, and labelled with
/// the sidecar it replaces. Its `spec-digest` is the plain sidecar's: the take-over is how it
/// starts, not what it is.
pub(crate) fn replacement_body(
    cfg: &Config,
    target: &For<'_>,
    use_certs: bool,
    old: &str,
) -> ContainerCreateBody {
    let mut body = sidecar_body(cfg, target, use_certs);
    body.env.get_or_insert_with(Vec::new).extend([
        format!("{}=true", env::TAKE_OVER),
        format!(
            "{}={}s",
            env::TAKE_OVER_TIMEOUT,
            cfg.rollout.timeout.as_secs().max(1)
        ),
    ]);
    body.labels.get_or_insert_with(HashMap::new).insert(
        label_name(&cfg.label_prefix, label::REPLACES),
        old.to_string(),
    );
    body
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;
    use shared::mode::Mode;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["spawner"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().into_config().unwrap()
    }

    fn spec() -> TargetSpec {
        TargetSpec {
            image: "tls-sidecar/sidecar:1".into(),
            listen: "0.0.0.0:8443".parse().unwrap(),
            backend: "127.0.0.1:3000".parse().unwrap(),
            mode: Mode::Tcp,
            hostname: "web.example".parse().unwrap(),
            hostname_wildcard: false,
            alt_names: Vec::new(),
            hostname_labelled: false,
            acme_challenge: Default::default(),
            mtls: None,
            identity: None,
            redirect_listen: None,
            hsts: None,
            http3: None,
            backend_protocol: Default::default(),
            alpn: Default::default(),
            proxy_protocol: Default::default(),
            tls_groups: Default::default(),
            exit_when_orphaned: false,
            published_udp_port: None,
            rollout: None,
        }
    }

    #[test]
    fn locked_down_and_labelled() {
        let spec = spec();
        let t = For {
            id: "abc123",
            started_at: "2024-01-01T00:00:00Z",
            spec: &spec,
        };
        let b = sidecar_body(&cfg(&[]), &t, false);
        assert_eq!(b.user.as_deref(), Some("65534:65534"));
        assert_eq!(b.stop_timeout, Some(12));
        let h = b.host_config.unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("container:abc123"));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            h.security_opt,
            Some(vec!["no-new-privileges:true".to_string()])
        );
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.pids_limit, Some(128));
        assert_eq!(
            h.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert!(
            h.mounts.is_none() && h.binds.is_none(),
            "no socket, no mounts"
        );
        let l = b.labels.unwrap();
        assert_eq!(l["tls-sidecar.sidecar-for"], "abc123");
        assert_eq!(l["tls-sidecar.managed-by"], "spawner");
        assert_eq!(l["tls-sidecar.target-started"], "2024-01-01T00:00:00Z");
        let env = b.env.unwrap();
        for want in [
            "SIDECAR_LISTEN=0.0.0.0:8443",
            "SIDECAR_BACKEND=127.0.0.1:3000",
            "SIDECAR_MODE=tcp",
            "SIDECAR_SHUTDOWN_GRACE=10s",
            "SIDECAR_SELF_SIGNED_NAMES=web.example,localhost,127.0.0.1",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
        }
    }

    #[test]
    fn the_spec_digest_follows_what_the_sidecar_is_told_not_where_it_runs_or_its_image() {
        let spec = spec();
        let at = |id, started_at, spec| For {
            id,
            started_at,
            spec,
        };
        let digest = |cfg: &Config, t: &For<'_>| {
            sidecar_body(cfg, t, false).labels.unwrap()["tls-sidecar.spec-digest"].clone()
        };
        let base = digest(&cfg(&[]), &at("abc", "t1", &spec));
        assert!(base.starts_with("sha256:") && base.len() == 71, "{base}");
        assert_eq!(
            base,
            digest(&cfg(&[]), &at("abc", "t1", &spec)),
            "deterministic"
        );
        // Another namespace of the same target (labels) and another image: the same digest.
        let mut other_image = spec.clone();
        other_image.image = "tls-sidecar/sidecar:2".into();
        assert_eq!(base, digest(&cfg(&[]), &at("abc", "t2", &other_image)));
        // A flag that changes what the sidecar is told, or its container: another digest.
        let graced = digest(
            &cfg(&["--sidecar-shutdown-grace", "20s"]),
            &at("abc", "t1", &spec),
        );
        let roomier = digest(
            &cfg(&["--sidecar-memory", "128MiB"]),
            &at("abc", "t1", &spec),
        );
        assert_ne!(base, graced);
        assert_ne!(base, roomier);
        // Roll-out settings are not part of the sidecar.
        let rollout = cfg(&["--rollout", "manual", "--rollout-parallelism", "4"]);
        assert_eq!(base, digest(&rollout, &at("abc", "t1", &spec)));
    }

    #[test]
    fn a_replacement_takes_over_from_the_sidecar_it_replaces_with_the_same_digest() {
        let spec = spec();
        let t = For {
            id: "abc123",
            started_at: "2024-01-01T00:00:00Z",
            spec: &spec,
        };
        let cfg = cfg(&["--rollout-timeout", "7s"]);
        let plain = sidecar_body(&cfg, &t, false);
        let b = replacement_body(&cfg, &t, false, "old-id");
        let env = b.env.clone().unwrap();
        assert!(
            env.contains(&"SIDECAR_TAKE_OVER=true".to_string()),
            "{env:?}"
        );
        assert!(
            env.contains(&"SIDECAR_TAKE_OVER_TIMEOUT=7s".to_string()),
            "{env:?}"
        );
        let labels = b.labels.unwrap();
        assert_eq!(labels["tls-sidecar.replaces"], "old-id");
        assert_eq!(
            labels["tls-sidecar.spec-digest"],
            plain.labels.unwrap()["tls-sidecar.spec-digest"]
        );
    }

    #[test]
    fn an_acme_managed_sidecar_reads_its_directory_and_answers_its_challenge() {
        let acme = cfg(&[
            "--certs-from",
            "/etc/le",
            "--acme-email",
            "a@example.com",
            "--acme-agree-tos",
        ]);
        let spec = TargetSpec {
            mode: Mode::Http,
            hostname_wildcard: false,
            alt_names: vec!["www.example".parse().unwrap()],
            hostname_labelled: true,
            ..spec()
        };
        let t = For {
            id: "abc",
            started_at: "s",
            spec: &spec,
        };
        let env = sidecar_body(&acme, &t, false).env.unwrap();
        for want in [
            "SIDECAR_CERTS_DIR=/certs",
            "SIDECAR_SELF_SIGNED_NAMES=web.example,www.example,localhost,127.0.0.1",
            "SIDECAR_REDIRECT_LISTEN=0.0.0.0:80",
            "SIDECAR_ACME_WEBROOT=/certs/acme/http-01",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
        }
        assert!(
            !env.iter().any(|e| e.starts_with("SIDECAR_CERT=")),
            "{env:?}"
        );
        // A redirect-listen label wins; TLS-ALPN-01 needs no redirect listener.
        let alpn = TargetSpec {
            acme_challenge: ChallengeKind::TlsAlpn01,
            ..spec.clone()
        };
        let s = sidecar_spec(&acme, &alpn, true);
        assert_eq!(s.redirect_listen, None);
        assert_eq!(s.acme_webroot, None);
        assert_eq!(
            s.acme_tls_alpn_dir,
            Some(PathBuf::from("/certs/acme/tls-alpn-01"))
        );
        let moved = TargetSpec {
            redirect_listen: Some("0.0.0.0:8080".parse().unwrap()),
            ..spec.clone()
        };
        assert_eq!(
            sidecar_spec(&acme, &moved, false).redirect_listen,
            Some("0.0.0.0:8080".parse().unwrap())
        );
        // Without a hostname label, or without ACME, nothing changes.
        let unlabelled = TargetSpec {
            hostname_labelled: false,
            ..spec.clone()
        };
        assert!(!acme_managed(&acme, &unlabelled));
        assert!(!acme_managed(&cfg(&["--certs-from", "/etc/le"]), &spec));
        assert!(matches!(
            sidecar_spec(&acme, &unlabelled, true).certificate,
            Certificate::Files { .. }
        ));
    }

    #[test]
    fn mtls_redirect_and_hsts_become_sidecar_env() {
        let spec = TargetSpec {
            mode: Mode::Http,
            mtls: Some(crate::plan::labels::Mtls {
                ca: "/certs/ca/clients.pem".parse().unwrap(),
                auth: shared::mode::ClientAuthMode::Optional,
                allow: shared::identity::Identities {
                    cn: "alice,bob".parse().unwrap(),
                    dns: Default::default(),
                    uri: "spiffe://example.org/*".parse().unwrap(),
                },
            }),
            redirect_listen: Some("0.0.0.0:8081".parse().unwrap()),
            hsts: Some(shared::parse::MaxAge(31_536_000)),
            ..spec()
        };
        let t = For {
            id: "abc",
            started_at: "s",
            spec: &spec,
        };
        let env = sidecar_body(&cfg(&["--certs-from", "/etc/pki"]), &t, false)
            .env
            .unwrap();
        for want in [
            "SIDECAR_CLIENT_CA=/certs/ca/clients.pem",
            "SIDECAR_CLIENT_AUTH=optional",
            "SIDECAR_ALLOW_CN=alice,bob",
            "SIDECAR_ALLOW_URI_SAN=spiffe://example.org/*",
            "SIDECAR_REDIRECT_LISTEN=0.0.0.0:8081",
            "SIDECAR_HSTS=31536000",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
        }
        assert!(!env.iter().any(|e| e.starts_with("SIDECAR_ALLOW_DNS_SAN")));
        let plain = sidecar_body(
            &cfg(&[]),
            &For {
                spec: &self::spec(),
                ..t
            },
            false,
        )
        .env
        .unwrap();
        assert!(
            !plain.iter().any(|e| e.starts_with("SIDECAR_CLIENT")
                || e.starts_with("SIDECAR_ALLOW")
                || e.starts_with("SIDECAR_REDIRECT")
                || e.starts_with("SIDECAR_HSTS")),
            "nothing unasked: {plain:?}"
        );
    }

    #[test]
    fn http3_advertises_the_label_else_the_published_udp_port() {
        let env = |spec: &TargetSpec| {
            let t = For {
                id: "abc",
                started_at: "s",
                spec,
            };
            let env = sidecar_body(&cfg(&[]), &t, false).env.unwrap();
            env.into_iter()
                .filter(|e| e.starts_with("SIDECAR_HTTP3"))
                .collect::<Vec<_>>()
        };
        let port = |p: u16| std::num::NonZeroU16::new(p);
        let on = TargetSpec {
            mode: Mode::Http,
            http3: Some(Http3::default()),
            ..spec()
        };
        assert_eq!(env(&on), ["SIDECAR_HTTP3=true"], "the sidecar's own port");
        let published = TargetSpec {
            published_udp_port: port(443),
            ..on.clone()
        };
        assert_eq!(
            env(&published),
            ["SIDECAR_HTTP3=true", "SIDECAR_HTTP3_ADVERTISE_PORT=443"]
        );
        let labelled = TargetSpec {
            http3: Some(Http3 {
                advertise_port: port(8444),
            }),
            ..published.clone()
        };
        assert_eq!(
            env(&labelled),
            ["SIDECAR_HTTP3=true", "SIDECAR_HTTP3_ADVERTISE_PORT=8444"],
            "the label wins over the published port"
        );
        let same = TargetSpec {
            published_udp_port: port(8443),
            ..on.clone()
        };
        assert_eq!(env(&same), ["SIDECAR_HTTP3=true"], "published as itself");
        let off = TargetSpec {
            mode: Mode::Http,
            published_udp_port: port(443),
            ..spec()
        };
        assert!(
            env(&off).is_empty(),
            "a published UDP port alone asks nothing"
        );
    }

    #[test]
    fn http3_changes_the_spec_digest() {
        let digest = |spec: &TargetSpec| {
            let t = For {
                id: "abc",
                started_at: "s",
                spec,
            };
            sidecar_body(&cfg(&[]), &t, false).labels.unwrap()["tls-sidecar.spec-digest"].clone()
        };
        let plain = TargetSpec {
            mode: Mode::Http,
            ..spec()
        };
        let on = TargetSpec {
            http3: Some(Http3::default()),
            ..plain.clone()
        };
        let advertised = TargetSpec {
            published_udp_port: std::num::NonZeroU16::new(443),
            ..on.clone()
        };
        let digests = [digest(&plain), digest(&on), digest(&advertised)];
        assert_ne!(digests[0], digests[1]);
        assert_ne!(digests[1], digests[2]);
        assert_ne!(digests[0], digests[2]);
        // Without HTTP/3 the published UDP port is not part of the sidecar.
        let unused = TargetSpec {
            published_udp_port: std::num::NonZeroU16::new(443),
            ..plain.clone()
        };
        assert_eq!(digests[0], digest(&unused));
    }

    #[test]
    fn alpn_and_proxy_protocol_reach_the_sidecar_env_only_when_set() {
        let env = |spec: &TargetSpec| {
            let t = For {
                id: "abc",
                started_at: "s",
                spec,
            };
            sidecar_body(&cfg(&[]), &t, false).env.unwrap()
        };
        let set = TargetSpec {
            alpn: "h2,http/1.1".parse().unwrap(),
            proxy_protocol: shared::proto::ProxyProtocol::V1,
            ..spec()
        };
        let got = env(&set);
        for want in ["SIDECAR_ALPN=h2,http/1.1", "SIDECAR_PROXY_PROTOCOL=v1"] {
            assert!(got.iter().any(|e| e == want), "{want} missing from {got:?}");
        }
        let plain = env(&spec());
        assert!(
            !plain
                .iter()
                .any(|e| e.starts_with("SIDECAR_ALPN") || e.starts_with("SIDECAR_PROXY_PROTOCOL")),
            "nothing unasked: {plain:?}"
        );
    }

    #[test]
    fn a_hostname_that_is_an_ipv4_literal_is_an_ip_san() {
        let spec = TargetSpec {
            hostname: "10.0.0.1".parse().unwrap(),
            ..spec()
        };
        let names = match sidecar_spec(&cfg(&[]), &spec, false).certificate {
            Certificate::SelfSigned { names } => names,
            other => panic!("self-signed expected, got {other:?}"),
        };
        assert_eq!(names[0], SanName::Ip("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn exit_when_orphaned_only_when_asked() {
        let env = |exit_when_orphaned| {
            let spec = TargetSpec {
                exit_when_orphaned,
                ..spec()
            };
            let t = For {
                id: "abc",
                started_at: "s",
                spec: &spec,
            };
            sidecar_body(&cfg(&[]), &t, false).env.unwrap()
        };
        assert!(env(true).contains(&"SIDECAR_EXIT_WHEN_ORPHANED=true".to_string()));
        assert!(!env(false)
            .iter()
            .any(|e| e.starts_with("SIDECAR_EXIT_WHEN_ORPHANED")));
    }

    #[test]
    fn certs_are_mounted_read_only_and_used_when_present() {
        let spec = spec();
        let t = For {
            id: "abc",
            started_at: "s",
            spec: &spec,
        };
        let b = sidecar_body(&cfg(&["--certs-from", "/etc/letsencrypt"]), &t, true);
        let m = &b.host_config.unwrap().mounts.unwrap()[0];
        assert_eq!(m.target.as_deref(), Some("/certs"));
        assert_eq!(
            (m.typ, m.source.as_deref()),
            (Some(MountType::VOLUME), None),
            "a volume of its own, never the store"
        );
        let env = b.env.unwrap();
        assert!(env.contains(&"SIDECAR_CERT=/certs/fullchain.pem".to_string()));
        assert!(env.contains(&"SIDECAR_KEY=/certs/privkey.pem".to_string()));
        // A named volume cannot be read by the spawner: mounted whole and read-only.
        let b = sidecar_body(&cfg(&["--certs-from", "letsencrypt"]), &t, true);
        let m = &b.host_config.unwrap().mounts.unwrap()[0];
        assert_eq!(
            (m.typ, m.source.as_deref(), m.read_only),
            (Some(MountType::VOLUME), Some("letsencrypt"), Some(true))
        );
        let env = b.env.unwrap();
        assert!(env.contains(&"SIDECAR_CERT=/certs/live/web.example/fullchain.pem".to_string()));
        assert!(!env
            .iter()
            .any(|e| e.starts_with("SIDECAR_SELF_SIGNED_NAMES")));
    }
}
