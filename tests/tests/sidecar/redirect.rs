//! The redirect listener (`--redirect-listen`, `--redirect-port`), ACME challenges from
//! `--acme-webroot` or answered with `--acme-thumbprint` (including path traversal attempts, sent as raw bytes so no client
//! normalises them, and a token swapped for a symlink while requests run) and HSTS (`--hsts`)
//! on proxied and sidecar-made responses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::backend::{refused_addr, Backend};
use harness::client::{self, HttpConn, Trust, ALPN_H1, ALPN_H2_H1};
use harness::redirect::{
    raw, raw_header, raw_headers, redirect_addr, request, HstsBackend, BACKEND_HSTS,
};
use harness::sidecar::{run_expect_fail, Sidecar};
use harness::tmp::TempDir;
use harness::wait::STEP;
use http::StatusCode;

/// A challenge token as Let's Encrypt issues them (43 base64url characters).
const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
/// What certbot writes into the token file: the key authorization.
const KEY_AUTH: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";
/// Content of a file outside the webroot that no request may ever see.
const SECRET: &str = "top-secret-outside-the-webroot";

async fn with_redirect(app: &Backend, extra: &[&str]) -> (Sidecar, SocketAddr) {
    let mut b = Sidecar::builder()
        .backend(app.addr())
        .arg("--redirect-listen")
        .arg("127.0.0.1:0");
    for a in extra {
        b = b.arg(*a);
    }
    let sc = b.start().await;
    let addr = redirect_addr(&sc, STEP).await;
    (sc, addr)
}

/// A webroot with one challenge, a secret beside it, and a symlink from the challenge
/// directory to the secret. Returns (base dir kept alive, webroot path).
fn webroot() -> (TempDir, std::path::PathBuf) {
    let base = TempDir::new("acme");
    let root = base.path().join("webroot");
    let challenges = root.join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenges).expect("create challenge dir");
    std::fs::write(challenges.join(TOKEN), KEY_AUTH).expect("write token");
    base.write("secret", SECRET);
    std::fs::write(root.join("secret"), SECRET).expect("write secret in webroot root");
    std::os::unix::fs::symlink(base.path().join("secret"), challenges.join("escape"))
        .expect("symlink out of the webroot");
    std::os::unix::fs::symlink("/etc/passwd", challenges.join("passwd"))
        .expect("symlink to /etc/passwd");
    (base, root)
}

#[tokio::test]
async fn plain_http_gets_a_308_to_the_same_host_path_and_query_on_the_tls_port() {
    let app = Backend::echo().await;
    let (sc, addr) = with_redirect(&app, &[]).await;
    let port = sc.addr().port();

    let resp = request(addr, "GET", "/a/b?c=d&e=%20f", Some("app.example:80")).await;
    assert_eq!(resp.status, 308, "{}", resp.head);
    assert_eq!(
        raw_header(&resp, "location").as_deref(),
        Some(format!("https://app.example:{port}/a/b?c=d&e=%20f").as_str())
    );
    assert!(raw_header(&resp, "content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    assert!(
        String::from_utf8_lossy(&resp.body).contains("https://app.example"),
        "small text body"
    );
    assert!(raw_header(&resp, "strict-transport-security").is_none());

    let resp = request(addr, "HEAD", "/", Some("APP.example")).await;
    assert_eq!(resp.status, 308);
    assert_eq!(
        raw_header(&resp, "location").as_deref(),
        Some(format!("https://app.example:{port}/").as_str())
    );
    let resp = request(addr, "POST", "/form", Some("app.example")).await;
    assert_eq!(resp.status, 308, "308 keeps the method, unlike 301");

    // Without --acme-webroot the challenge path is redirected like any other.
    let resp = request(
        addr,
        "GET",
        &format!("/.well-known/acme-challenge/{TOKEN}"),
        Some("app.example"),
    )
    .await;
    assert_eq!(resp.status, 308);

    let line = sc
        .wait_log_all(&["request", "/a/b?c=d", "status=308"], STEP)
        .await;
    assert!(line.contains("client=127.0.0.1"), "{line}");
    assert!(line.contains("method=GET"), "{line}");
    // The TLS listener still serves.
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H2_H1),
    )
    .await;
    assert_eq!(conn.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn redirect_port_overrides_the_listen_port_and_443_is_left_out() {
    let app = Backend::echo().await;
    let (_sc, addr) = with_redirect(&app, &["--redirect-port", "9443"]).await;
    let resp = request(addr, "GET", "/x?y", Some("app.example:8080")).await;
    assert_eq!(
        raw_header(&resp, "location").as_deref(),
        Some("https://app.example:9443/x?y")
    );

    let sc = Sidecar::builder()
        .backend(app.addr())
        .env("SIDECAR_REDIRECT_LISTEN", "127.0.0.1:0")
        .env("SIDECAR_REDIRECT_PORT", "443")
        .start()
        .await;
    let addr = redirect_addr(&sc, STEP).await;
    let resp = request(addr, "GET", "/x", Some("app.example")).await;
    assert_eq!(resp.status, 308);
    assert_eq!(
        raw_header(&resp, "location").as_deref(),
        Some("https://app.example/x")
    );
}

#[tokio::test]
async fn ip_hosts_keep_their_form_and_lose_their_port() {
    let app = Backend::echo().await;
    let (_sc, addr) = with_redirect(&app, &["--redirect-port", "8443"]).await;
    for (host, expected) in [
        ("[::1]:8080", "https://[::1]:8443/p"),
        ("[2001:DB8::1]", "https://[2001:db8::1]:8443/p"),
        ("192.0.2.7:80", "https://192.0.2.7:8443/p"),
        ("app.example.", "https://app.example.:8443/p"),
    ] {
        let resp = request(addr, "GET", "/p", Some(host)).await;
        assert_eq!(resp.status, 308, "{host}: {}", resp.head);
        assert_eq!(
            raw_header(&resp, "location").as_deref(),
            Some(expected),
            "{host}"
        );
    }
}

#[tokio::test]
async fn missing_or_invalid_host_gets_400_and_no_location() {
    let app = Backend::echo().await;
    let (_sc, addr) = with_redirect(&app, &[]).await;
    let mut cases: Vec<RawCase> = [
        "evil.example/phish",
        "evil.example@x",
        "evil.example:80@x",
        "evil example",
        "evil.example:abc",
        "[::1",
        "::1",
        "%65vil.example",
        "evil.example\\x",
        "",
    ]
    .iter()
    .map(|h| RawCase::Host(h.to_string()))
    .collect();
    cases.push(RawCase::Raw(
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
    ));
    cases.push(RawCase::Raw("GET / HTTP/1.0\r\n\r\n".to_string()));
    cases.push(RawCase::Raw(
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
            .to_string(),
    ));
    for case in cases {
        let resp = match &case {
            RawCase::Host(h) => request(addr, "GET", "/", Some(h)).await,
            RawCase::Raw(r) => raw(addr, r).await,
        };
        assert_eq!(resp.status, 400, "{case:?}: {}", resp.head);
        assert!(
            raw_header(&resp, "location").is_none(),
            "{case:?}: {}",
            resp.head
        );
        assert!(
            !String::from_utf8_lossy(&resp.body).contains("evil"),
            "{case:?} reflected"
        );
    }
}

#[derive(Debug)]
enum RawCase {
    Host(String),
    Raw(String),
}

#[tokio::test]
async fn acme_challenges_are_served_from_the_webroot() {
    let app = Backend::echo().await;
    let (_dir, root) = webroot();
    let root = root.display().to_string();
    let (_sc, addr) = with_redirect(&app, &["--acme-webroot", &root]).await;

    let path = format!("/.well-known/acme-challenge/{TOKEN}");
    let resp = request(addr, "GET", &path, Some("app.example")).await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.body, KEY_AUTH.as_bytes());
    assert!(raw_header(&resp, "content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    assert!(raw_header(&resp, "location").is_none());

    // Validators may come without a usable Host; the challenge does not depend on it.
    let resp = raw(addr, &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
    assert_eq!(resp.status, 200, "{}", resp.head);

    let resp = request(addr, "HEAD", &path, Some("app.example")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        raw_header(&resp, "content-length").as_deref(),
        Some(KEY_AUTH.len().to_string().as_str())
    );

    let resp = request(
        addr,
        "GET",
        "/.well-known/acme-challenge/unknown-token",
        Some("app.example"),
    )
    .await;
    assert_eq!(resp.status, 404);

    // Everything else still redirects.
    let resp = request(addr, "GET", "/.well-known/other", Some("app.example")).await;
    assert_eq!(resp.status, 308);
}

/// The thumbprint in [`KEY_AUTH`]: the ACME account whose answers `--acme-thumbprint` gives.
const THUMBPRINT: &str = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

#[tokio::test]
async fn acme_challenges_are_answered_statelessly_with_the_account_thumbprint() {
    let app = Backend::echo().await;
    let (_sc, addr) = with_redirect(&app, &["--acme-thumbprint", THUMBPRINT]).await;

    // Any token, with no file anywhere: the key authorization of that account.
    let path = format!("/.well-known/acme-challenge/{TOKEN}");
    let resp = request(addr, "GET", &path, Some("app.example")).await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.body, KEY_AUTH.as_bytes());
    assert!(raw_header(&resp, "content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    let resp = request(
        addr,
        "GET",
        "/.well-known/acme-challenge/other-Token_1",
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.body, format!("other-Token_1.{THUMBPRINT}").as_bytes());

    // A token outside base64url (a way out of the directory, or into the answer) is not one.
    for bad in ["a.b", "..", "a%2Fb", "a$b"] {
        let resp = raw(
            addr,
            &format!("GET /.well-known/acme-challenge/{bad} HTTP/1.1\r\nHost: a.example\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 404, "token {bad}: {}", resp.head);
    }
    let resp = request(addr, "POST", &path, Some("app.example")).await;
    assert_eq!(resp.status, 405);
    // Everything else still redirects.
    let resp = request(addr, "GET", "/.well-known/other", Some("app.example")).await;
    assert_eq!(resp.status, 308);
}

#[tokio::test]
async fn a_webroot_answer_comes_before_the_stateless_one() {
    let app = Backend::echo().await;
    let (_dir, root) = webroot();
    let root = root.display().to_string();
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (_sc, addr) =
        with_redirect(&app, &["--acme-webroot", &root, "--acme-thumbprint", other]).await;
    // The file's answer (another account's, as certbot wrote it) wins...
    let path = format!("/.well-known/acme-challenge/{TOKEN}");
    let resp = request(addr, "GET", &path, Some("app.example")).await;
    assert_eq!(resp.body, KEY_AUTH.as_bytes());
    // ...and a token without a file gets the stateless answer; a symlink is never followed.
    let resp = request(addr, "GET", "/.well-known/acme-challenge/nofile", None).await;
    assert_eq!(resp.body, format!("nofile.{other}").as_bytes());
    let resp = request(addr, "GET", "/.well-known/acme-challenge/escape", None).await;
    assert_eq!(resp.body, format!("escape.{other}").as_bytes());
}

#[tokio::test]
async fn path_traversal_never_reads_outside_the_webroot() {
    let app = Backend::echo().await;
    let (_dir, root) = webroot();
    let root = root.display().to_string();
    let (_sc, addr) = with_redirect(&app, &["--acme-webroot", &root]).await;

    let attempts = [
        "/.well-known/acme-challenge/../../../secret",
        "/.well-known/acme-challenge/../../secret",
        "/.well-known/acme-challenge/../../etc/passwd",
        "/.well-known/acme-challenge/../../../../../../../../etc/passwd",
        "/.well-known/acme-challenge/%2e%2e%2f%2e%2e%2fsecret",
        "/.well-known/acme-challenge/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret",
        "/.well-known/acme-challenge/..%2f..%2fsecret",
        "/.well-known/acme-challenge/..%2f..%2f..%2fsecret",
        "/.well-known/acme-challenge/..%5c..%5csecret",
        "/.well-known/acme-challenge/..",
        "/.well-known/acme-challenge/.",
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge//etc/passwd",
        "/.well-known/acme-challenge/escape",
        "/.well-known/acme-challenge/passwd",
    ];
    for target in attempts {
        let resp = request(addr, "GET", target, Some("app.example")).await;
        let body = String::from_utf8_lossy(&resp.body);
        assert_eq!(resp.status, 404, "{target}: {}{body}", resp.head);
        assert!(
            !body.contains(SECRET) && !body.contains("root:"),
            "{target} leaked: {body}"
        );
    }
    // The token itself still works, so the 404s above are the validation, not a broken webroot.
    let resp = request(
        addr,
        "GET",
        &format!("/.well-known/acme-challenge/{TOKEN}"),
        None,
    )
    .await;
    assert_eq!(resp.status, 200);
}

/// Swaps the token file for a symlink to a secret outside the webroot and back, each time by
/// renaming a prepared entry over it (atomic: the token path always names one or the other), on
/// its own thread until dropped or [`Flipper::MAX_FLIPS`] are done.
struct Flipper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Flipper {
    /// Bound on the swaps, so the thread ends even if never stopped (seconds of work).
    const MAX_FLIPS: u64 = 2_000_000;

    fn start(challenges: PathBuf, secret: PathBuf) -> Flipper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let token = challenges.join(TOKEN);
            let file = challenges.join("flip-file");
            let link = challenges.join("flip-link");
            // New names for one written file, not new files: renaming a freshly written file
            // over another starts a disk write on ext4, which slows the swaps by orders of
            // magnitude and lets the race slip by.
            let original = challenges.join("key-auth");
            std::fs::write(&original, KEY_AUTH).expect("write the key authorization");
            let mut flips = 0;
            while flips < Flipper::MAX_FLIPS && !flag.load(Ordering::Relaxed) {
                std::fs::hard_link(&original, &file).expect("link the token file");
                std::fs::rename(&file, &token).expect("rename the file over the token");
                std::os::unix::fs::symlink(&secret, &link).expect("symlink to the secret");
                std::fs::rename(&link, &token).expect("rename the symlink over the token");
                flips += 2;
            }
            flips
        });
        Flipper {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the swaps and returns how many were made.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("flipper thread"))
            .unwrap_or(0)
    }
}

impl Drop for Flipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test]
async fn swapping_the_token_for_a_symlink_mid_request_never_leaks_the_target() {
    /// Enough requests that, without no-follow opens, the secret leaks in nearly every run.
    const REQUESTS: usize = 500;
    /// More, until both states were seen: on a loaded machine the swapping thread can be
    /// descheduled through all of the first 500.
    const MAX_REQUESTS: usize = 20_000;
    let app = Backend::echo().await;
    let (dir, root) = webroot();
    let secret = dir.path().join("secret");
    let webroot = root.display().to_string();
    let (_sc, addr) = with_redirect(&app, &["--acme-webroot", &webroot]).await;
    let path = format!("/.well-known/acme-challenge/{TOKEN}");

    let flipper = Flipper::start(root.join(".well-known/acme-challenge"), secret);
    let started = std::time::Instant::now();
    let (mut served, mut refused, mut leaked) = (0, 0, 0);
    let mut i = 0;
    while i < REQUESTS || ((served == 0 || refused == 0) && i < MAX_REQUESTS) {
        i += 1;
        let resp = request(addr, "GET", &path, None).await;
        let body = String::from_utf8_lossy(&resp.body);
        match resp.status {
            _ if body.contains(SECRET) => leaked += 1,
            200 => {
                assert_eq!(body, KEY_AUTH, "request {i}");
                served += 1;
            }
            404 => refused += 1,
            other => panic!("request {i}: unexpected status {other}: {}", resp.head),
        }
    }
    let flips = flipper.finish();
    let tally = format!(
        "{i} requests in {:?} over {flips} swaps: {served} served, {refused} refused, \
         {leaked} leaked",
        started.elapsed()
    );
    eprintln!("{tally}");
    assert_eq!(leaked, 0, "the symlink's target was served: {tally}");
    // Both states were seen, so the requests really raced the swaps.
    assert!(
        served > 0 && refused > 0,
        "the race did not happen: {tally}"
    );
}

#[tokio::test]
async fn redirect_and_webroot_configuration_errors() {
    let (_dir, root) = webroot();
    let root = root.display().to_string();

    let out = run_expect_fail(&["--acme-webroot", &root], &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(out.lines().len(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("--acme-webroot") && out.stderr.contains("--redirect-listen"),
        "{}",
        out.stderr
    );

    let missing = format!("{root}/does-not-exist");
    let out = run_expect_fail(
        &[
            "--redirect-listen",
            "127.0.0.1:0",
            "--acme-webroot",
            &missing,
        ],
        &[],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(out.lines().len(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("--acme-webroot") && out.stderr.contains(&missing),
        "{}",
        out.stderr
    );

    let file = format!("{root}/secret");
    let out = run_expect_fail(
        &["--redirect-listen", "127.0.0.1:0", "--acme-webroot", &file],
        &[],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("not a directory"), "{}", out.stderr);

    let out = run_expect_fail(&["--redirect-listen", "nowhere"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--redirect-listen"), "{}", out.stderr);

    // --acme-thumbprint: only with the listener, and only a SHA-256 thumbprint (also from its
    // environment variable).
    let out = run_expect_fail(&["--acme-thumbprint", THUMBPRINT], &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("--acme-thumbprint") && out.stderr.contains("--redirect-listen"),
        "{}",
        out.stderr
    );
    let out = run_expect_fail(
        &["--redirect-listen", "127.0.0.1:0"],
        &[("SIDECAR_ACME_THUMBPRINT", "not/a+thumbprint")],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("--acme-thumbprint") && out.stderr.contains("not/a+thumbprint"),
        "{}",
        out.stderr
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let taken_addr = taken.local_addr().expect("taken address").to_string();
    let out = run_expect_fail(&["--redirect-listen", &taken_addr], &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("--redirect-listen") && out.stderr.contains(&taken_addr),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn redirect_listener_stops_on_shutdown() {
    let app = Backend::echo().await;
    let (mut sc, addr) = with_redirect(&app, &[]).await;
    assert_eq!(
        request(addr, "GET", "/", Some("a.example")).await.status,
        308
    );
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "redirect port still open after exit"
    );
}

async fn get_via_tls(sc: &Sidecar, path: &str) -> client::Reply {
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    conn.get(path).await
}

#[tokio::test]
async fn hsts_is_absent_by_default() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let reply = get_via_tls(&sc, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.header("strict-transport-security").is_none(),
        "{:?}",
        reply.headers
    );
}

#[tokio::test]
async fn hsts_is_added_to_proxied_and_sidecar_made_responses_over_h1_and_h2() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--hsts")
        .arg("1y")
        .arg("--hsts-include-subdomains")
        .arg("--redirect-listen")
        .arg("127.0.0.1:0")
        .start()
        .await;
    let expected = "max-age=31536000; includeSubDomains";
    let reply = get_via_tls(&sc, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("strict-transport-security"), Some(expected));

    let mut h2 = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H2_H1),
    )
    .await;
    assert_eq!(h2.alpn(), Some("h2"));
    let reply = h2.get("/").await;
    assert_eq!(reply.header("strict-transport-security"), Some(expected));

    // Not on plain HTTP: browsers ignore it there (RFC 6797 section 8.1).
    let addr = redirect_addr(&sc, STEP).await;
    let resp = request(addr, "GET", "/", Some("a.example")).await;
    assert_eq!(resp.status, 308);
    assert!(
        raw_header(&resp, "strict-transport-security").is_none(),
        "{}",
        resp.head
    );

    // The sidecar's own error responses carry it too.
    let down = Sidecar::builder()
        .backend(refused_addr())
        .env("SIDECAR_HSTS", "365d")
        .start()
        .await;
    let reply = get_via_tls(&down, "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.header("strict-transport-security"),
        Some("max-age=31536000")
    );
}

#[tokio::test]
async fn hsts_set_by_the_backend_is_kept_and_not_duplicated() {
    let app = HstsBackend::start().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--hsts")
        .arg("31536000")
        .start()
        .await;
    let reply = get_via_tls(&sc, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hsts-app");
    let values: Vec<_> = reply
        .headers
        .get_all("strict-transport-security")
        .iter()
        .collect();
    assert_eq!(values, vec![BACKEND_HSTS], "exactly the backend's value");

    // The same on the wire, where a duplicated header would show as two lines.
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    let resp = client::raw_exchange(
        tls,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("raw response");
    assert_eq!(
        raw_headers(&resp, "strict-transport-security"),
        vec![BACKEND_HSTS.to_string()]
    );
}
