//! The spawner against the real Docker engine, issue 12's protocol labels: `alpn` and
//! `proxy-protocol` (tcp mode) and `backend-protocol` (http mode) reach the sidecar's
//! environment and take effect through the published port; bad values and a mode mismatch are
//! refused with no sidecar and a reason naming the label. Each test runs its own spawner with
//! its own label prefix; a `TestRun` guard removes what it made.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use harness::client::{self, Trust};
use harness::docker::{
    host_port, https_get_with_head, images, inspect, poll, sidecars_for, unique_name, wait_sidecar,
    TestRun, LIFECYCLE_DEADLINE,
};
use harness::spawner::{self, Spawner};
use tokio::io::AsyncReadExt;

/// The opt-in label for a test prefix, asking for this build's sidecar image.
fn opt_in(prefix: &str) -> String {
    format!("{prefix}.proxy-image={}", images().sidecar)
}

/// A demo container opted in under `prefix` with `labels`, publishing 8443 on a free loopback
/// port; `env` is passed with `-e` (e.g. `DEMO_MODE=raw-echo`). Returns its name and ID.
fn target(run: &TestRun, prefix: &str, labels: &[String], env: &[&str]) -> (String, String) {
    let name = unique_name("app");
    let mut args = vec![
        "-p".to_string(),
        "127.0.0.1::8443".to_string(),
        "--label".to_string(),
        opt_in(prefix),
    ];
    for l in labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    for e in env {
        args.push("-e".into());
        args.push((*e).to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = run.container(&name, &images().demo, &args, &[]);
    (name, id)
}

/// One TLS connection to `port` offering ALPN `h2` then `http/1.1`: the protocol negotiated and
/// every byte the sidecar relayed until it closed. `None` when the connection or handshake
/// fails or nothing came back (the sidecar not listening yet).
async fn tls_read_all(port: u16) -> Option<(Option<String>, Vec<u8>)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let config = client::config(Trust::AnyCert, &["h2", "http/1.1"]);
    let mut tls = tokio::time::timeout(
        Duration::from_secs(3),
        client::try_tls_connect(addr, "localhost", config),
    )
    .await
    .ok()?
    .ok()?;
    let alpn = client::alpn(&tls);
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // A TCP close without close_notify still ends what the app sent.
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()?;
    (!got.is_empty()).then_some((alpn, got))
}

/// A PROXY protocol v1 line for TCP over IPv4 (`PROXY TCP4 SRC DST SPORT DPORT\r\n`): its
/// source and destination.
fn parse_proxy_v1(line: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let head = line
        .strip_suffix("\r\n")
        .ok_or_else(|| format!("not ended by CRLF: {line:?}"))?;
    let fields: Vec<&str> = head.split(' ').collect();
    let [proxy, proto, src, dst, sport, dport] = fields.as_slice() else {
        return Err(format!("expected 6 space-separated fields: {line:?}"));
    };
    if *proxy != "PROXY" || *proto != "TCP4" {
        return Err(format!("expected `PROXY TCP4 ...`: {line:?}"));
    }
    let ip = |v: &str| {
        v.parse::<Ipv4Addr>()
            .map_err(|e| format!("{v:?} is no IPv4 address ({e}): {line:?}"))
    };
    let port = |v: &str| match v.parse::<u16>() {
        Ok(p) if p != 0 && !v.starts_with('0') => Ok(p),
        _ => Err(format!("{v:?} is no port in canonical form: {line:?}")),
    };
    Ok((
        SocketAddr::from((ip(src)?, port(sport)?)),
        SocketAddr::from((ip(dst)?, port(dport)?)),
    ))
}

#[test]
fn proxy_v1_line_parser_accepts_only_well_formed_lines() {
    let (src, dst) = parse_proxy_v1("PROXY TCP4 172.17.0.1 172.17.0.5 40000 8443\r\n")
        .expect("a well-formed line");
    assert_eq!(src, "172.17.0.1:40000".parse().expect("addr"));
    assert_eq!(dst, "172.17.0.5:8443".parse().expect("addr"));
    for bad in [
        "PROXY TCP4 172.17.0.1 172.17.0.5 40000 8443\n",
        "PROXY TCP6 ::1 ::1 40000 8443\r\n",
        "PROXY TCP4 172.17.0.1 172.17.0.5 40000\r\n",
        "PROXY TCP4 172.17.0.1 172.17.0.5 040000 8443\r\n",
        "PROXY UNKNOWN\r\n",
        "GET / HTTP/1.1\r\n",
    ] {
        assert!(parse_proxy_v1(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn tcp_mode_alpn_and_proxy_v1_labels_reach_the_sidecar_and_the_app() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let (_, id) = target(
        &run,
        &prefix,
        &[
            format!("{prefix}.mode=tcp"),
            format!("{prefix}.alpn=h2,http/1.1"),
            format!("{prefix}.proxy-protocol=v1"),
        ],
        &["DEMO_MODE=raw-echo"],
    );
    let sidecar = wait_sidecar(&prefix, &id);
    sidecar.assert_env(&[
        "SIDECAR_MODE=tcp",
        "SIDECAR_ALPN=h2,http/1.1",
        "SIDECAR_PROXY_PROTOCOL=v1",
    ]);

    // The app (raw-echo) sends back the first line it received: with PROXY v1 that is the
    // header the sidecar wrote before any byte of the client's.
    let port = host_port(&id, 8443);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let ((alpn, bytes), took) = poll(
        LIFECYCLE_DEADLINE,
        "the app's first line back through TLS",
        || rt.block_on(tls_read_all(port)),
    );
    eprintln!("observed: first line through the sidecar after {took:?}");
    assert_eq!(
        alpn.as_deref(),
        Some("h2"),
        "the client offered h2 first: the sidecar's list (h2,http/1.1) picks it"
    );
    let line = String::from_utf8_lossy(&bytes).to_string();
    let (src, dst) = parse_proxy_v1(&line).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("observed: the app's first line {line:?}");
    // The client is on the host's loopback; the engine's port forwarding hands the connection
    // to the container from the bridge side, so the source the sidecar sees is an engine
    // address, not 127.0.0.1. The destination is where the sidecar listens in the target.
    assert_eq!(
        dst.port(),
        8443,
        "destination port is the sidecar's listen port: {line:?}"
    );
    assert!(
        !src.ip().is_unspecified(),
        "a real source address: {line:?}"
    );
    assert!(
        !dst.ip().is_unspecified(),
        "a real destination address: {line:?}"
    );
    // On the default bridge the address the sidecar accepted on is the target's own.
    let target_ip = inspect(&id).expect("target exists").raw["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !target_ip.is_empty() {
        assert_eq!(
            dst.ip().to_string(),
            target_ip,
            "destination is the target's address: {line:?}"
        );
    }
}

#[test]
fn backend_protocol_h2c_label_reaches_the_sidecar_and_the_app_gets_http2() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let (_, id) = target(
        &run,
        &prefix,
        &[format!("{prefix}.backend-protocol=h2c")],
        &[],
    );
    let sidecar = wait_sidecar(&prefix, &id);
    sidecar.assert_env(&["SIDECAR_BACKEND_PROTOCOL=h2c"]);

    // The demo serves HTTP/1.1 and h2c on one port and names the version a request came in.
    let port = host_port(&id, 8443);
    let (answer, _) = poll(LIFECYCLE_DEADLINE, "https through the sidecar", || {
        https_get_with_head(port)
    });
    let version = answer
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("x-demo-version")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no x-demo-version from the demo:\n{answer}"));
    assert_eq!(
        version, "HTTP/2.0",
        "backend-protocol=h2c: the sidecar speaks HTTP/2 (prior knowledge) to the app:\n{answer}"
    );
}

#[test]
fn bad_backend_protocol_labels_get_no_sidecar_and_a_status_reason() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let label = format!("{prefix}.backend-protocol");
    let cases = [
        (
            vec![format!("{label}=h3")],
            "h3",
            "expected auto, http1 or h2c",
        ),
        (
            vec![format!("{prefix}.mode=tcp"), format!("{label}=h2c")],
            "h2c",
            "needs mode http",
        ),
    ];
    let bad: Vec<(String, String, &str, &str)> = cases
        .iter()
        .map(|(labels, value, reason)| {
            let (name, id) = target(&run, &prefix, labels, &[]);
            (name, id, *value, *reason)
        })
        .collect();
    // A valid target beside them: once it has its sidecar, the spawner has seen them all.
    let good = target(&run, &prefix, &[], &[]).1;
    wait_sidecar(&prefix, &good);
    for (name, id, value, reason) in &bad {
        spawner.wait_invalid_label(name, &label, value, reason);
        assert!(
            sidecars_for(&prefix, id).is_empty(),
            "{label}={value}: no sidecar"
        );
    }
    let status = spawner::status(&prefix, &[]);
    for (name, _, value, reason) in &bad {
        let row = status
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} in status:\n{status}"));
        assert!(
            row.contains(label.as_str()) && row.contains(value) && row.contains(reason),
            "status shows the reason for {label}={value}: {row}"
        );
    }
    // Still none after the spawner had time to act on them.
    std::thread::sleep(Duration::from_millis(500));
    for (_, id, value, _) in &bad {
        assert!(
            sidecars_for(&prefix, id).is_empty(),
            "{label}={value}: no sidecar"
        );
    }
}
