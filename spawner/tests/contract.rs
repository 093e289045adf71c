//! The contract between the spawner and the sidecar, as property tests: what the spawner writes
//! into a sidecar's environment, the sidecar's real command line (`sidecar::config::Cli`) reads
//! back as the same [`SidecarSpec`]; and whatever label set the spawner accepts gives a sidecar
//! environment the sidecar accepts.
//!
//! The sidecar reads its settings from the process environment (clap's `env`), so these tests set
//! real environment variables. They are their own test binary, and the one lock below keeps its
//! two tests from interleaving: nothing else in this process reads the environment.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use shared::addr::{BackendAddr, Host, ListenAddr};
use shared::dns::{DnsName, SanName};
use shared::identity::{CommonName, DnsPattern, Identities, List, UriPattern};
use shared::mode::{ClientAuthMode, Mode};
use shared::parse::MaxAge;
use shared::proto::{AlpnId, AlpnList, BackendProtocol, ProxyProtocol, TlsGroup, TlsGroups};
use shared::service_identity::{TrustDomain, Upstream};
use shared::spec::{Certificate, ClientAuth, Http3, IdentityFiles, SidecarSpec};
use shared::telemetry::LogFormat;

/// Serialises the tests of this binary: both set the process environment.
static ENVIRONMENT: Mutex<()> = Mutex::new(());

/// Cases per property: enough to reach every variant and most value shapes on each run, while
/// the whole binary stays around a second.
const CASES: u32 = 512;

/// What the sidecar understands from exactly `vars` in its environment.
fn sidecar_reads(vars: &[(&'static str, String)]) -> Result<SidecarSpec, String> {
    for (name, _) in std::env::vars() {
        if name.starts_with("SIDECAR_")
            || name.starts_with("GOSSLTERM_")
            || name == "LOG_LEVEL"
            || name == "RUST_LOG"
        {
            std::env::remove_var(name);
        }
    }
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
    let cli = sidecar::config::Cli::try_parse_from(["sidecar"]).map_err(|e| e.to_string())?;
    let config = cli
        .into_config(
            |name| std::env::var(name).ok(),
            Some("sidecar-host".to_string()),
        )
        .map_err(|e| e.to_string())?;
    Ok(config.spec())
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: CASES,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// Values of type `T` from raw strings that `T` parses: generated text goes through the one
/// parser, so only values the grammar admits (in their normalised form) come out.
fn parsed<T: FromStr + std::fmt::Debug>(
    raw: impl Strategy<Value = String>,
) -> impl Strategy<Value = T> {
    raw.prop_filter_map("not in the grammar", |s| s.parse::<T>().ok())
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ]
}

fn port() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_filter_map("zero", NonZeroU16::new)
}

fn listen() -> impl Strategy<Value = ListenAddr> {
    (ip(), port()).prop_map(|(ip, port)| ListenAddr::from(SocketAddr::new(ip, port.get())))
}

const LABEL: &str = "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,20}[a-zA-Z0-9_])?";

/// DNS names that are not IPv4 literals: `0.0.0.0` is a valid DnsName, but every parser that
/// takes a name or an address (backend hosts, certificate names) reads it as the address, so no
/// flag or label can give such a name where an address is also allowed.
fn dns_name() -> impl Strategy<Value = DnsName> {
    parsed(prop::collection::vec(LABEL, 1..5).prop_map(|labels| labels.join(".")))
        .prop_filter("an IPv4 literal is read as an address", |n: &DnsName| {
            n.as_str().parse::<IpAddr>().is_err()
        })
}

fn backend() -> impl Strategy<Value = BackendAddr> {
    let host = prop_oneof![ip().prop_map(Host::Ip), dns_name().prop_map(Host::Name)];
    (host, port()).prop_map(|(host, port)| BackendAddr { host, port })
}

fn san_name() -> impl Strategy<Value = SanName> {
    prop_oneof![
        dns_name().prop_map(SanName::Dns),
        dns_name().prop_map(SanName::Wildcard),
        ip().prop_map(SanName::Ip),
    ]
}

fn path() -> impl Strategy<Value = PathBuf> {
    "/[a-zA-Z0-9_.-]{1,12}(/[a-zA-Z0-9_. -]{1,12}){0,3}".prop_map(PathBuf::from)
}

fn identities() -> impl Strategy<Value = Identities> {
    let cn = parsed::<CommonName>("[^,\\p{Cc}]{1,24}");
    let dns = parsed::<DnsPattern>(
        prop::collection::vec(
            prop_oneof![Just("*".to_string()), LABEL.prop_map(String::from)],
            1..4,
        )
        .prop_map(|l| l.join(".")),
    );
    let uri =
        parsed::<UriPattern>("[a-z]{1,8}:(//)?[a-z0-9.]{1,12}(/([a-zA-Z0-9_~%-]{1,8}|\\*)){0,4}");
    (
        prop::collection::vec(cn, 0..3),
        prop::collection::vec(dns, 0..3),
        prop::collection::vec(uri, 0..3),
    )
        .prop_map(|(cn, dns, uri)| Identities {
            cn: List(cn),
            dns: List(dns),
            uri: List(uri),
        })
}

fn certificate() -> impl Strategy<Value = Certificate> {
    prop_oneof![
        (path(), path()).prop_map(|(cert, key)| Certificate::Files { cert, key }),
        prop::collection::vec(san_name(), 1..4).prop_map(|names| Certificate::SelfSigned { names }),
        (path(), prop::collection::vec(san_name(), 1..4))
            .prop_map(|(dir, names)| Certificate::Dir { dir, names }),
    ]
}

fn client_auth() -> impl Strategy<Value = ClientAuth> {
    let mode = prop_oneof![
        Just(ClientAuthMode::Required),
        Just(ClientAuthMode::Optional)
    ];
    (path(), mode, identities()).prop_map(|(ca, mode, allow)| ClientAuth { ca, mode, allow })
}

/// A service identity: any paths, a trust domain through its parser.
fn identity_files() -> impl Strategy<Value = IdentityFiles> {
    let domain = parsed::<TrustDomain>(
        prop::collection::vec(LABEL, 1..4).prop_map(|labels| labels.join(".")),
    );
    (path(), path(), path(), domain).prop_map(|(cert, key, ca, domain)| IdentityFiles {
        cert,
        key,
        ca,
        domain,
    })
}

/// Egress relays through their parser: loopback locals in every form the grammar takes (a bare
/// port, 127.0.0.0/8, `[::1]`), remotes named or `NAME@`-qualified; one relay per local address,
/// as the sidecar requires.
fn upstreams() -> impl Strategy<Value = Vec<Upstream>> {
    let local = prop_oneof![
        port().prop_map(|p| p.to_string()),
        (any::<[u8; 3]>(), port()).prop_map(|(o, p)| format!("127.{}.{}.{}:{p}", o[0], o[1], o[2])),
        port().prop_map(|p| format!("[::1]:{p}")),
    ];
    let remote = prop_oneof![
        backend().prop_map(|b| b.to_string()),
        (dns_name(), backend()).prop_map(|(name, b)| format!("{name}@{b}")),
    ];
    let protocol = prop_oneof![
        2 => Just(String::new()),
        1 => Just("/h2".to_string()),
        1 => Just("/http/1.1".to_string()),
    ];
    let one =
        parsed::<Upstream>((local, remote, protocol).prop_map(|(l, r, p)| format!("{l}={r}{p}")));
    prop::collection::vec(one, 0..4).prop_map(|mut list| {
        let mut seen = std::collections::HashSet::new();
        list.retain(|u| seen.insert(u.local));
        list
    })
}

/// ALPN protocol ids: registered ones, and any printable text the grammar admits (up to the
/// 255-byte limit).
fn alpn_id() -> impl Strategy<Value = AlpnId> {
    prop_oneof![
        4 => prop_oneof![Just("h2"), Just("http/1.1"), Just("acme-tls/1"), Just("imap")]
            .prop_map(|s| s.parse::<AlpnId>().expect("registered id")),
        2 => parsed::<AlpnId>("[!-+\\--~]{1,24}"),
        1 => parsed::<AlpnId>("[a-z]{250,255}"),
    ]
}

fn alpn_list() -> impl Strategy<Value = AlpnList> {
    prop::collection::vec(alpn_id(), 0..4).prop_map(|mut ids| {
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        AlpnList(ids)
    })
}

fn proxy_protocol() -> impl Strategy<Value = ProxyProtocol> {
    prop_oneof![
        Just(ProxyProtocol::Off),
        Just(ProxyProtocol::V1),
        Just(ProxyProtocol::V2)
    ]
}

/// Any order of any subset of the groups (empty: the default).
fn tls_groups() -> impl Strategy<Value = TlsGroups> {
    Just(TlsGroup::ALL.to_vec())
        .prop_shuffle()
        .prop_flat_map(|all| (0..=all.len()).prop_map(move |n| TlsGroups(all[..n].to_vec())))
}

fn backend_protocol() -> impl Strategy<Value = BackendProtocol> {
    prop_oneof![
        Just(BackendProtocol::Auto),
        Just(BackendProtocol::Http1),
        Just(BackendProtocol::H2c)
    ]
}

/// HTTP/3 off, on, or on with an advertised port.
fn http3() -> impl Strategy<Value = Option<Http3>> {
    prop::option::of(prop::option::of(port()).prop_map(|advertise_port| Http3 { advertise_port }))
}

/// Every spec a spawner can send: any value of each type, with the cross-setting rules the
/// spawner enforces on labels too (HSTS and HTTP/3 only in http mode; ALPN and PROXY protocol
/// only in tcp mode; upstreams only with an identity).
fn spec() -> impl Strategy<Value = SidecarSpec> {
    let mode = prop_oneof![Just(Mode::Http), Just(Mode::Tcp)];
    let log_format = prop_oneof![Just(LogFormat::Text), Just(LogFormat::Json)];
    let grace = (1u64..=86_400_000_000_000).prop_map(Duration::from_nanos);
    (
        (listen(), backend(), mode, certificate()),
        (
            prop::option::of(client_auth()),
            prop::option::of(listen()),
            prop::option::of(any::<u64>().prop_map(MaxAge)),
            http3(),
        ),
        (grace, log_format, any::<bool>(), tls_groups()),
        (alpn_list(), proxy_protocol(), backend_protocol()),
        (prop::option::of(path()), prop::option::of(path())),
        (prop::option::of(identity_files()), upstreams()),
    )
        .prop_map(
            |(
                (listen, backend, mode, certificate),
                (client_auth, redirect_listen, hsts, http3),
                (shutdown_grace, log_format, exit_when_orphaned, tls_groups),
                (alpn, proxy_protocol, backend_protocol),
                (acme_webroot, acme_tls_alpn_dir),
                (identity, upstreams),
            )| SidecarSpec {
                listen,
                backend,
                mode,
                certificate,
                client_auth,
                redirect_listen,
                hsts: hsts.filter(|_| mode == Mode::Http),
                http3: http3.filter(|_| mode == Mode::Http),
                backend_protocol: if mode == Mode::Http {
                    backend_protocol
                } else {
                    BackendProtocol::Auto
                },
                alpn: if mode == Mode::Tcp {
                    alpn
                } else {
                    AlpnList::default()
                },
                proxy_protocol: if mode == Mode::Tcp {
                    proxy_protocol
                } else {
                    ProxyProtocol::Off
                },
                tls_groups,
                shutdown_grace,
                log_format,
                exit_when_orphaned,
                // HTTP-01 answers are served on the redirect listener only.
                acme_webroot: acme_webroot.filter(|_| redirect_listen.is_some()),
                acme_tls_alpn_dir,
                // Relays present the identity: none without one.
                upstreams: if identity.is_some() {
                    upstreams
                } else {
                    Vec::new()
                },
                identity,
            },
        )
}

#[test]
fn the_sidecar_reads_every_spec_back_as_it_was_rendered() {
    let _env = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    runner()
        .run(&spec(), |spec| {
            let env = spec.to_env();
            let read = sidecar_reads(&env)
                .map_err(|e| TestCaseError::fail(format!("the sidecar refused {env:?}: {e}")))?;
            prop_assert_eq!(read, spec, "environment: {:?}", env);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A label value: often a valid form of what the label takes, sometimes one just outside it,
/// sometimes noise.
fn label_value(valid: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![
        16 => valid,
        1 => "[ -~]{0,24}",
        1 => "[0-9:.\\[\\]a-f*,/ -]{0,24}",
    ]
    .boxed()
}

fn labels() -> impl Strategy<Value = HashMap<String, String>> {
    let addr_forms = prop_oneof![
        4 => port().prop_map(|p| p.to_string()),
        4 => port().prop_map(|p| format!(":{p}")),
        4 => listen().prop_map(|a| a.to_string()),
        1 => Just("0".to_string()),
        1 => Just("127.0.0.1:0".to_string()),
    ]
    .boxed();
    let backend_forms = prop_oneof![
        6 => backend().prop_map(|b| b.to_string()),
        6 => port().prop_map(|p| p.to_string()),
        1 => Just("-app:80".to_string()),
        1 => Just("app:0".to_string()),
    ]
    .boxed();
    let names = prop_oneof![
        12 => dns_name().prop_map(|n| n.to_string()),
        4 => prop::collection::vec(dns_name(), 1..4).prop_map(|ns| {
            ns.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        }),
        1 => Just("10.0.0.1".to_string()),
        1 => Just("*.example.com".to_string()),
        1 => "[a-z]{64}".prop_map(String::from),
    ]
    .boxed();
    let lists = identities()
        .prop_map(|i| format!("{},{}", i.cn, i.uri))
        .boxed();
    let choices: Vec<(&str, BoxedStrategy<String>)> = vec![
        ("listen", addr_forms.clone()),
        ("redirect-listen", addr_forms),
        ("backend", backend_forms),
        (
            "mode",
            prop_oneof![
                Just("http".to_string()),
                Just("tcp".to_string()),
                Just(" tcp ".to_string())
            ]
            .boxed(),
        ),
        ("hostname", names),
        (
            "hsts",
            prop_oneof![
                any::<u32>().prop_map(|n| n.to_string()),
                Just("1y".to_string()),
                Just("365d".to_string())
            ]
            .boxed(),
        ),
        (
            "http3",
            prop_oneof![
                4 => Just("true".to_string()),
                1 => Just("false".to_string()),
                1 => Just(" true ".to_string()),
            ]
            .boxed(),
        ),
        (
            "http3-advertise-port",
            prop_oneof![
                4 => port().prop_map(|p| p.to_string()),
                1 => Just(" 443 ".to_string()),
            ]
            .boxed(),
        ),
        (
            "tls-groups",
            prop_oneof![
                4 => tls_groups().prop_map(|g| g.to_string()),
                1 => Just(" x25519mlkem768 , P-256".to_string()),
                1 => Just("X448".to_string()),
            ]
            .boxed(),
        ),
        (
            "backend-protocol",
            prop_oneof![
                8 => backend_protocol().prop_map(|p| p.to_string()),
                1 => Just(" h2c ".to_string()),
                1 => Just("h2".to_string()),
            ]
            .boxed(),
        ),
    ];
    // The mutual-TLS labels mostly come as a group (they need `client-ca`), sometimes alone.
    let mtls: Vec<(&str, BoxedStrategy<String>)> = vec![
        (
            "client-ca",
            prop_oneof![
                Just("ca/clients.pem".to_string()),
                Just("/certs/a.pem".to_string()),
                Just("../x".to_string())
            ]
            .boxed(),
        ),
        (
            "client-auth",
            prop_oneof![Just("required".to_string()), Just("optional".to_string())].boxed(),
        ),
        ("allow-cn", lists),
        (
            "allow-dns-san",
            identities().prop_map(|i| i.dns.to_string()).boxed(),
        ),
        (
            "allow-uri-san",
            identities().prop_map(|i| i.uri.to_string()).boxed(),
        ),
    ];
    // The tcp-mode labels: refused with mode http, so they mostly come with mode tcp.
    let tcp: Vec<(&str, BoxedStrategy<String>)> = vec![
        (
            "alpn",
            prop_oneof![
                4 => alpn_list().prop_map(|l| l.to_string()),
                1 => Just(" h2 , http/1.1,".to_string()),
                1 => Just("h2,h2".to_string()),
            ]
            .boxed(),
        ),
        (
            "proxy-protocol",
            prop_oneof![
                4 => proxy_protocol().prop_map(|p| p.to_string()),
                1 => Just(" v2 ".to_string()),
            ]
            .boxed(),
        ),
    ];
    let optional = |choices: Vec<(&'static str, BoxedStrategy<String>)>| -> Vec<BoxedStrategy<Option<(String, String)>>> {
        choices
            .into_iter()
            .map(|(suffix, valid)| {
                prop::option::of(label_value(valid))
                    .prop_map(move |v| v.map(|v| (format!("tls-sidecar.{suffix}"), v)))
                    .boxed()
            })
            .collect()
    };
    let mtls = prop_oneof![
        2 => Just(Vec::new()),
        2 => optional(mtls.clone()),
        1 => optional(mtls).prop_map(|mut pairs| {
            pairs.truncate(1);
            pairs
        }),
    ];
    let tcp = prop_oneof![
        2 => Just(Vec::new()),
        1 => optional(tcp),
    ];
    // The ACME challenge kind changes the sidecar's spec (a redirect listener and webroot, or
    // the TLS-ALPN-01 directory); always valid here, its refusals are the labels unit tests'.
    let challenge = prop_oneof![
        2 => Just(None),
        1 => Just(Some("http-01")),
        1 => Just(Some("tls-alpn-01")),
    ];
    (
        optional(choices),
        mtls,
        tcp,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
        challenge,
    )
        .prop_map(|(pairs, mtls, tcp, as_tcp, keep_http_only, challenge)| {
            let mut labels: HashMap<String, String> =
                pairs.into_iter().chain(mtls).flatten().collect();
            // The http-mode labels mostly come without mode tcp, sometimes with it (refused).
            let is_tcp = labels.get("tls-sidecar.mode").map(|m| m.trim()) == Some("tcp");
            // The advertised port mostly comes with HTTP/3 on, sometimes without (refused).
            if labels.contains_key("tls-sidecar.http3-advertise-port") && !keep_http_only {
                labels.insert("tls-sidecar.http3".into(), "true".into());
            }
            if is_tcp && !keep_http_only {
                labels.remove("tls-sidecar.backend-protocol");
                labels.remove("tls-sidecar.http3");
                labels.remove("tls-sidecar.http3-advertise-port");
            }
            if tcp.iter().any(Option::is_some) && as_tcp {
                labels.insert("tls-sidecar.mode".into(), "tcp".into());
                labels.remove("tls-sidecar.hsts");
                labels.remove("tls-sidecar.http3");
                labels.remove("tls-sidecar.http3-advertise-port");
                labels.remove("tls-sidecar.backend-protocol");
            }
            labels.extend(tcp.into_iter().flatten());
            if let Some(kind) = challenge {
                labels.insert("tls-sidecar.acme-challenge".into(), kind.into());
            }
            labels.insert(
                "tls-sidecar.proxy-image".into(),
                "tls-sidecar/sidecar:test".into(),
            );
            labels
        })
}

#[test]
fn whatever_labels_the_spawner_accepts_the_sidecar_accepts() {
    let _env = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = spawner::Cli::try_parse_from(["spawner"])
        .expect("default spawner flags")
        .into_config()
        .expect("valid defaults");
    // With ACME on, a target with a hostname label gets a sidecar that reads a directory and
    // answers challenges: those specs must round-trip too.
    let acme = spawner::Cli::try_parse_from([
        "spawner",
        "--certs-from",
        "/store",
        "--acme-email",
        "a@example.com",
        "--acme-agree-tos",
    ])
    .expect("acme spawner flags")
    .into_config()
    .expect("valid acme flags");
    let container_name = "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,80}";
    let exposed = prop::collection::vec((1u16..=u16::MAX).prop_map(|p| format!("{p}/tcp")), 0..3);
    let inputs = (
        labels(),
        container_name,
        exposed,
        any::<(bool, bool, bool)>(),
        any::<bool>(),
        prop::option::of(port()),
    );
    let accepted = std::cell::Cell::new(0u32);
    runner()
        .run(
            &inputs,
            |(labels, name, exposed, (mounted, use_certs, own_network), with_acme, udp)| {
                let Some(parsed) = spawner::parse_target(
                    "tls-sidecar",
                    &name,
                    &labels,
                    &exposed,
                    spawner::Offered::certs(mounted),
                ) else {
                    return Err(TestCaseError::fail("the opt-in label is set"));
                };
                let Ok(mut target) = parsed else {
                    return Ok(());
                };
                accepted.set(accepted.get() + 1);
                target.exit_when_orphaned = own_network;
                target.published_udp_port = udp;
                let cfg = if with_acme { &acme } else { &cfg };
                let spec = spawner::sidecar_spec(cfg, &target, use_certs);
                let env = spec.to_env();
                let read = sidecar_reads(&env).map_err(|e| {
                    TestCaseError::fail(format!(
                        "labels {labels:?} were accepted, the sidecar refused {env:?}: {e}"
                    ))
                })?;
                prop_assert_eq!(read, spec);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let accepted = accepted.get();
    eprintln!("{accepted} of {CASES} generated label sets were accepted and round-tripped");
    // About a fifth of the generated sets are accepted (the rest hold at least one invalid
    // label). The seed is random per run, so the bound sits well below that mean (more than four
    // standard deviations): it catches a generator that stopped reaching accepted sets, not a
    // run that drew a few less.
    assert!(
        accepted >= CASES / 8,
        "the generator must reach accepted label sets often ({accepted} of {CASES})"
    );
}
