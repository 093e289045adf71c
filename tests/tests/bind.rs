//! The test DNS server (`harness::bind`, BIND 9's named) itself, before DNS-01 tests rely on it:
//! its zones answer, signed RFC 2136 updates add and remove TXT values side by side (also behind
//! a CNAME into a second zone), an update signed with a wrong key or to a zone without updates
//! is refused and changes nothing, and Pebble pointed at it resolves its names: it validates
//! DNS-01 by its TXT records, through the CNAME too, and HTTP-01 at its A records.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use harness::bind::{tsig_keygen, Bind, TsigAlgorithm, Zone, TSIG_KEY_NAME};
use harness::client::{self, HttpConn, Trust, ALPN_H1};
use harness::pebble::{Options, Pebble};
use harness::tmp::TempDir;
use harness::wait::within;
use instant_acme::{
    Account, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The whole of each test: starts, queries and updates take milliseconds.
const LIMIT: Duration = Duration::from_secs(30);

/// `example.test` (updates allowed) with A records and `_acme-challenge.alias.example.test`
/// delegated by CNAME to `alias.validation.test`, in `validation.test` (updates allowed);
/// `static.test` takes no updates.
fn zones() -> Vec<Zone> {
    vec![
        Zone::new("example.test")
            .a("example.test")
            .a("www.example.test")
            .a("alias.example.test")
            .cname(
                "_acme-challenge.alias.example.test",
                "alias.validation.test",
            )
            .dynamic(),
        Zone::new("validation.test").dynamic(),
        Zone::new("static.test").a("static.test"),
    ]
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

#[tokio::test]
async fn zones_answer_and_signed_updates_change_txt_records() {
    within(LIMIT, "the BIND self-test", async {
        let bind = Bind::start(&zones()).await;

        for zone in ["example.test", "validation.test", "static.test"] {
            let soa = bind.records(zone, "SOA").await;
            assert_eq!(soa.len(), 1, "one SOA for {zone}: {soa:?}");
            assert!(soa[0].starts_with(&format!("ns.{zone}. ")), "{soa:?}");
        }
        for name in ["example.test", "www.example.test", "static.test"] {
            assert_eq!(bind.records(name, "A").await, ["127.0.0.1"], "{name}");
        }
        assert_eq!(
            bind.records("_acme-challenge.alias.example.test", "CNAME")
                .await,
            ["alias.validation.test."]
        );
        assert!(bind.records("nothing.example.test", "A").await.is_empty());
        // A name outside the zones: NXDOMAIN from the server's own root zone, no query out.
        assert!(bind.records("example.com", "A").await.is_empty());

        let key = std::fs::read_to_string(bind.tsig_key_file()).expect("read the key file");
        assert!(
            key.starts_with(&format!("key \"{TSIG_KEY_NAME}\" {{"))
                && key.contains("algorithm hmac-sha256;")
                && key.contains(&format!("secret \"{}\";", bind.tsig_secret())),
            "tsig-keygen's format: {key}"
        );
        assert_eq!(bind.tsig_secret().len(), 44, "a 256-bit secret in base64");

        // Two values side by side, as for a certificate for example.test and *.example.test.
        let challenge = "_acme-challenge.example.test";
        assert!(bind.txt(challenge).await.is_empty());
        bind.update_txt(challenge, "first-value", true).await;
        bind.update_txt(challenge, "second-value", true).await;
        assert_eq!(
            sorted(bind.txt(challenge).await),
            ["first-value", "second-value"]
        );

        // Into the validation zone, seen through the CNAME as a resolver sees it.
        bind.update_txt("alias.validation.test", "delegated-value", true)
            .await;
        assert_eq!(
            bind.txt("_acme-challenge.alias.example.test").await,
            ["delegated-value"]
        );
        // At the CNAME itself, named ignores a TXT update and nsupdate still says success: a
        // DNS-01 client must write at the CNAME's target.
        bind.update_txt("_acme-challenge.alias.example.test", "ignored-value", true)
            .await;
        assert_eq!(
            bind.txt("_acme-challenge.alias.example.test").await,
            ["delegated-value"]
        );

        bind.update_txt(challenge, "first-value", false).await;
        assert_eq!(bind.txt(challenge).await, ["second-value"]);

        // A wrong secret under the right name, and a key the server does not know.
        let keys = TempDir::new("bind-wrong-keys");
        let wrong_secret = keys.write(
            "wrong-secret.key",
            tsig_keygen(TSIG_KEY_NAME, TsigAlgorithm::HmacSha256),
        );
        let unknown = keys.write(
            "unknown.key",
            tsig_keygen("someone-else", TsigAlgorithm::HmacSha256),
        );
        for (key, expected) in [(&wrong_secret, "BADSIG"), (&unknown, "BADKEY")] {
            let refused = bind
                .update_txt_with_key(key, challenge, "forged-value", true)
                .await
                .expect_err("an update signed with a wrong key is refused");
            assert!(
                refused.contains("NOTAUTH") && refused.contains(expected),
                "{expected}: {refused}"
            );
            let refused = bind
                .update_txt_with_key(key, challenge, "second-value", false)
                .await
                .expect_err("a delete signed with a wrong key is refused");
            assert!(refused.contains("NOTAUTH"), "{refused}");
        }
        assert_eq!(bind.txt(challenge).await, ["second-value"], "unchanged");

        // The right key, but a zone without allow-update.
        let refused = bind
            .update_txt_with_key(bind.tsig_key_file(), "static.test", "value", true)
            .await
            .expect_err("a zone without updates refuses them");
        assert!(refused.contains("REFUSED"), "{refused}");
        assert!(bind.txt("static.test").await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn hmac_sha512_keys_sign_updates_too() {
    within(LIMIT, "BIND with an hmac-sha512 key", async {
        let bind = Bind::start_with(
            &[Zone::new("example.test").dynamic()],
            TsigAlgorithm::HmacSha512,
        )
        .await;
        assert_eq!(bind.tsig_algorithm(), TsigAlgorithm::HmacSha512);
        let key = std::fs::read_to_string(bind.tsig_key_file()).expect("read the key file");
        assert!(key.contains("algorithm hmac-sha512;"), "{key}");
        assert_eq!(bind.tsig_secret().len(), 88, "a 512-bit secret in base64");

        bind.update_txt("_acme-challenge.example.test", "value", true)
            .await;
        assert_eq!(bind.txt("_acme-challenge.example.test").await, ["value"]);
        bind.update_txt("_acme-challenge.example.test", "value", false)
            .await;
        assert!(bind.txt("_acme-challenge.example.test").await.is_empty());
    })
    .await;
}

/// Answers every HTTP request on 127.0.0.1:`port` with `body`: Pebble's HTTP-01 fetches (it
/// makes three).
async fn serve_http01(port: u16, body: String) -> JoinHandle<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap_or_else(|e| panic!("bind Pebble's HTTP-01 port {port}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

#[tokio::test]
async fn pebble_resolves_through_bind_for_dns01_and_http01() {
    within(LIMIT, "Pebble validating against BIND", async {
        let bind = Bind::start(&zones()).await;
        let pebble = Pebble::start_with(Options {
            dns_server: Some(bind.addr()),
            ..Options::default()
        })
        .await;
        assert_eq!(pebble.dns_addr(), bind.addr());

        let listen: SocketAddr = pebble
            .directory_url()
            .trim_start_matches("https://")
            .trim_end_matches("/dir")
            .parse()
            .expect("the directory's address");
        let tls = client::config(Trust::Ca(pebble.directory_ca_der()), ALPN_H1);
        let directory = HttpConn::connect(listen, "localhost", tls)
            .await
            .get("/dir")
            .await;
        assert_eq!(directory.status, http::StatusCode::OK);
        assert!(
            directory.text().contains("newOrder"),
            "{}",
            directory.text()
        );

        let mut roots = RootCertStore::empty();
        roots
            .add(pebble.directory_ca_der())
            .expect("Pebble's directory CA");
        let (account, _) = Account::builder_with_http(Box::new(spawner::AcmeHttp::new(roots)))
            .create(
                &NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                pebble.directory_url().to_string(),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("create an ACME account: {e}\n{}", pebble.logs()));

        // DNS-01 at the name's own TXT record and through the CNAME; HTTP-01 at the A record.
        let names = ["example.test", "alias.example.test", "www.example.test"];
        let identifiers = names.map(|n| Identifier::Dns(n.to_string()));
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .unwrap_or_else(|e| panic!("new order: {e}"));
        let mut responders = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.unwrap_or_else(|e| panic!("an authorization: {e}"));
            let name = authz.identifier().to_string();
            let kind = if name == "www.example.test" {
                ChallengeType::Http01
            } else {
                ChallengeType::Dns01
            };
            let mut challenge = authz
                .challenge(kind.clone())
                .unwrap_or_else(|| panic!("no {kind:?} challenge for {name}"));
            let key_authorization = challenge.key_authorization();
            match name.as_str() {
                "example.test" => {
                    bind.update_txt(
                        "_acme-challenge.example.test",
                        &key_authorization.dns_value(),
                        true,
                    )
                    .await
                }
                "alias.example.test" => {
                    bind.update_txt(
                        "alias.validation.test",
                        &key_authorization.dns_value(),
                        true,
                    )
                    .await
                }
                _ => {
                    let body = key_authorization.as_str().to_string();
                    responders.push(serve_http01(pebble.http_port(), body).await);
                }
            }
            challenge
                .set_ready()
                .await
                .unwrap_or_else(|e| panic!("{name}'s {kind:?} challenge ready: {e}"));
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(50))
            .backoff(1.5)
            .timeout(Duration::from_secs(20));
        let status = order
            .poll_ready(&retries)
            .await
            .unwrap_or_else(|e| panic!("order ready: {e}\n{}\n{}", pebble.logs(), bind.logs()));
        assert_eq!(
            status,
            OrderStatus::Ready,
            "every name validated through BIND\n{}\n{}",
            pebble.logs(),
            bind.logs()
        );
        for responder in responders {
            responder.abort();
        }
    })
    .await;
}
