//! The spawner against the real Docker engine, issue 28's HTTP/3 labels: `http3=true` on a target
//! that publishes its TLS port on TCP and UDP gives a sidecar that answers HTTP/3 through the
//! published UDP port and advertises that port in `Alt-Svc`; `http3-advertise-port` overrides
//! it; `http3` with mode `tcp`, or the port without `http3=true`, is refused with no sidecar and
//! a reason naming the label. Each test runs its own spawner with its own label prefix; a
//! `TestRun` guard removes what it made.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use harness::client::Trust;
use harness::docker::{
    docker_ok, host_port, https_get_with_head, images, poll, sidecars_for, unique_name,
    wait_sidecar, TestRun, LIFECYCLE_DEADLINE,
};
use harness::h3::{self, H3Conn};
use harness::spawner::{self, Spawner};
use harness::wait::{poll_until_async, within, STEP};

/// The port the sidecar listens on in the target (the `listen` label's default).
const LISTEN: u16 = 8443;

/// A demo container opted in under `prefix` with `labels`, publishing the sidecar's port with
/// each of `publish` (`-p` values). Returns its name and ID.
fn target(run: &TestRun, prefix: &str, labels: &[String], publish: &[&str]) -> (String, String) {
    let name = unique_name("app");
    let mut args = vec![
        "--label".to_string(),
        format!("{prefix}.proxy-image={}", images().sidecar),
    ];
    for p in publish {
        args.push("-p".into());
        args.push((*p).to_string());
    }
    for l in labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = run.container(&name, &images().demo, &args, &[]);
    (name, id)
}

/// The TLS port published on a free loopback port, over TCP and UDP alike.
const TCP_AND_UDP: &[&str] = &["127.0.0.1::8443/tcp", "127.0.0.1::8443/udp"];

/// The host port a container's `port/udp` is published on.
fn udp_host_port(container: &str, port: u16) -> u16 {
    let out = docker_ok(&["port", container, &format!("{port}/udp")]);
    out.lines()
        .find_map(|l| l.rsplit(':').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("container {container} does not publish {port}/udp: {out:?}"))
}

/// The value of header `name` in a `curl -i` answer.
fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn http3_label_serves_http3_through_the_published_udp_port_and_advertises_it() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let (_, id) = target(
        &run,
        &prefix,
        &[format!("{prefix}.http3=true")],
        TCP_AND_UDP,
    );
    let tcp = host_port(&id, LISTEN);
    let udp = udp_host_port(&id, LISTEN);
    eprintln!("observed: 8443 published on 127.0.0.1:{tcp}/tcp and 127.0.0.1:{udp}/udp");

    // No label names the advertised port: the spawner reads it from the target's UDP publication.
    let sidecar = wait_sidecar(&prefix, &id);
    sidecar.assert_env(&[
        "SIDECAR_HTTP3=true",
        &format!("SIDECAR_HTTP3_ADVERTISE_PORT={udp}"),
    ]);

    // HTTP/1.1 over TCP tells the client where HTTP/3 is: the published UDP port.
    let (answer, _) = poll(LIFECYCLE_DEADLINE, "https through the sidecar", || {
        https_get_with_head(tcp)
    });
    let alt_svc = header(&answer, "alt-svc")
        .unwrap_or_else(|| panic!("an Alt-Svc header on the TCP answer:\n{answer}"));
    assert!(
        alt_svc.contains(&format!("h3=\":{udp}\"")),
        "Alt-Svc names the published UDP port {udp}: {alt_svc}"
    );

    // And HTTP/3 answers there: QUIC through the engine's UDP forwarding to the sidecar.
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, udp));
    let tls = h3::config(Trust::AnyCert, None);
    let (alpn, reply) = rt.block_on(async {
        let conn = poll_until_async(
            LIFECYCLE_DEADLINE,
            "an HTTP/3 handshake on the UDP port",
            || {
                let tls = tls.clone();
                async move {
                    H3Conn::try_connect(addr, "localhost", tls, Duration::from_secs(2))
                        .await
                        .map_err(|e| eprintln!("observed: no HTTP/3 yet: {e}"))
                        .ok()
                }
            },
        )
        .await;
        let reply = within(STEP, "GET / over HTTP/3", conn.get("/")).await;
        (conn.alpn(), reply)
    });
    assert_eq!(alpn.as_deref(), Some("h3"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.text().starts_with("GET / "),
        "the demo's echo through HTTP/3, got {:?}",
        reply.text()
    );
}

#[test]
fn http3_labels_reach_the_sidecar_or_are_refused_naming_the_label() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let http3 = format!("{prefix}.http3");
    let port = format!("{prefix}.http3-advertise-port");
    let cases = [
        (
            vec![format!("{prefix}.mode=tcp"), format!("{http3}=true")],
            &http3,
            "true",
            "needs mode http".to_string(),
        ),
        (
            vec![format!("{http3}=yes")],
            &http3,
            "yes",
            "expected true or false".to_string(),
        ),
        (
            vec![format!("{port}=443")],
            &port,
            "443",
            format!("needs {http3}=true"),
        ),
        (
            vec![format!("{http3}=true"), format!("{port}=0")],
            &port,
            "0",
            "expected a port, 1 to 65535".to_string(),
        ),
    ];
    let bad: Vec<(String, String, &str, &str, &str)> = cases
        .iter()
        .map(|(labels, label, value, reason)| {
            let (name, id) = target(&run, &prefix, labels, &["127.0.0.1::8443"]);
            (name, id, label.as_str(), *value, reason.as_str())
        })
        .collect();
    // A valid target beside them, its advertised port set by label: once it has its sidecar,
    // the spawner has seen them all. The label wins over the published UDP port.
    let good = target(
        &run,
        &prefix,
        &[format!("{http3}=true"), format!("{port}=443")],
        TCP_AND_UDP,
    )
    .1;
    wait_sidecar(&prefix, &good)
        .assert_env(&["SIDECAR_HTTP3=true", "SIDECAR_HTTP3_ADVERTISE_PORT=443"]);
    for (name, id, label, value, reason) in &bad {
        spawner.wait_invalid_label(name, label, value, reason);
        assert!(
            sidecars_for(&prefix, id).is_empty(),
            "{label}={value}: no sidecar"
        );
    }
    let status = spawner::status(&prefix, &[]);
    for (name, _, label, value, reason) in &bad {
        let row = status
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} in status:\n{status}"));
        assert!(
            row.contains(label) && row.contains(value) && row.contains(reason),
            "status shows the reason for {label}={value}: {row}"
        );
    }
}
