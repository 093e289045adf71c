//! The redirect listener: plain HTTP on `--redirect-listen` that answers every request with a
//! `308` to the same host and path over https, except ACME http-01 challenges
//! (`/.well-known/acme-challenge/<token>`), which are served from `--acme-webroot` when set.
//!
//! Nothing a client sends reaches the `Location` header or the file system unvalidated: the Host
//! must be a DNS name or an IP address (the port is replaced), and a token must be base64url
//! text, so it cannot name anything but a file in the challenge directory; a symlink out of the
//! webroot or anything but a regular file is refused as well.

use std::convert::Infallible;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::ConfigError;

/// Where challenge files live under the webroot (certbot's `--webroot` layout).
pub const CHALLENGE_DIR: &str = ".well-known/acme-challenge";
/// The request path prefix of ACME http-01 challenges (RFC 8555 section 8.3).
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
/// Longest token accepted. ACME tokens are 43 characters (256 bits of base64url); the margin
/// allows other issuers while keeping file names short.
const MAX_TOKEN_LEN: usize = 256;
/// Largest challenge file served. A key authorization is under 200 bytes; anything much larger
/// in the challenge directory is not a challenge and is not worth holding in memory.
const MAX_CHALLENGE_BYTES: u64 = 64 * 1024;
/// Most connections served at once. Redirects are one tiny request each; the bound keeps a
/// flood on the public port 80 from costing more than a few megabytes.
const MAX_CONNECTIONS: usize = 1024;
/// Longest a connection may live, head included: one request, one response of at most
/// [`MAX_CHALLENGE_BYTES`]; a client slower than this is holding a slot, not reading.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Checks at start that the webroot is a directory and returns its canonical path, against
/// which every challenge file's own canonical path is compared.
pub fn check_webroot(dir: &Path) -> Result<PathBuf, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        flag: "--acme-webroot",
        value: dir.display().to_string(),
        reason,
    };
    let canonical =
        std::fs::canonicalize(dir).map_err(|e| invalid(format!("cannot be resolved: {e}")))?;
    if !canonical.is_dir() {
        return Err(invalid("not a directory".to_string()));
    }
    Ok(canonical)
}

/// What the redirect listener needs.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// The https port put in Locations.
    pub port: u16,
    /// The canonical webroot, if challenges are served.
    pub webroot: Option<PathBuf>,
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
}

/// Serves redirects (and challenges) on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, redirect: Redirect, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(redirect = %addr, port = redirect.port, acme = redirect.webroot.is_some(), "redirect listening");
    }
    let redirect = Arc::new(redirect);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "redirect accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let redirect = redirect.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let header_read_timeout = redirect.header_read_timeout;
            let service = service_fn(move |req| {
                let redirect = redirect.clone();
                async move { Ok::<_, Infallible>(handle(&redirect, peer, &req).await) }
            });
            // One request per connection: browsers follow the redirect to another origin and
            // ACME validators fetch once, so keep-alive would only hold idle sockets.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                res = tokio::time::timeout(CONNECTION_LIFETIME, conn) => match res {
                    Ok(Err(error)) => debug!(%peer, %error, "redirect connection error"),
                    Err(_) => debug!(%peer, "redirect connection too slow, closed"),
                    Ok(Ok(())) => {}
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn handle(
    redirect: &Redirect,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let resp = respond(redirect, req).await;
    info!(
        client = %peer,
        method = %req.method(),
        path = %req.uri().path_and_query().map_or("/", |p| p.as_str()),
        status = resp.status().as_u16(),
        listener = "redirect",
        "request"
    );
    resp
}

async fn respond(redirect: &Redirect, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let (Some(webroot), Some(token)) = (&redirect.webroot, path.strip_prefix(CHALLENGE_PREFIX)) {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        if !is_valid_token(token) {
            return text(StatusCode::NOT_FOUND, "no such challenge\n".into());
        }
        return match read_challenge(webroot.clone(), token.to_string()).await {
            Some(body) => text(StatusCode::OK, body),
            None => text(StatusCode::NOT_FOUND, "no such challenge\n".into()),
        };
    }
    let Some(host) = request_host(req.headers()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing or invalid Host header\n".into(),
        );
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = location(&host, redirect.port, target);
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            let mut resp = text(
                StatusCode::PERMANENT_REDIRECT,
                Bytes::from(format!("redirecting to {location}\n")),
            );
            resp.headers_mut().insert(header::LOCATION, value);
            resp
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "invalid request target\n".into()),
    }
}

fn text(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Reads a challenge file off the async runtime. `None` for anything that is not a regular file
/// inside the webroot of at most [`MAX_CHALLENGE_BYTES`].
async fn read_challenge(webroot: PathBuf, token: String) -> Option<Bytes> {
    let task = tokio::task::spawn_blocking(move || {
        let path = webroot.join(CHALLENGE_DIR).join(&token);
        let canonical = match std::fs::canonicalize(&path) {
            Ok(p) => p,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot resolve acme challenge file");
                return None;
            }
        };
        if !canonical.starts_with(&webroot) {
            warn!(path = %path.display(), target = %canonical.display(), "acme challenge file leads outside the webroot, refused");
            return None;
        }
        // Checked before opening: opening a FIFO would block until someone writes to it.
        match std::fs::metadata(&canonical) {
            Ok(meta) if meta.is_file() => {}
            _ => {
                warn!(path = %path.display(), "acme challenge path is not a regular file, refused");
                return None;
            }
        }
        let file = match std::fs::File::open(&canonical) {
            Ok(f) => f,
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot open acme challenge file");
                return None;
            }
        };
        let mut body = Vec::new();
        if let Err(error) = file.take(MAX_CHALLENGE_BYTES + 1).read_to_end(&mut body) {
            warn!(path = %path.display(), %error, "cannot read acme challenge file");
            return None;
        }
        if body.len() as u64 > MAX_CHALLENGE_BYTES {
            warn!(path = %path.display(), limit = MAX_CHALLENGE_BYTES, "acme challenge file too large, refused");
            return None;
        }
        Some(Bytes::from(body))
    });
    task.await.ok().flatten()
}

// ---- pure rules ----

/// Whether `token` can be a challenge file name: 1 to [`MAX_TOKEN_LEN`] characters of the
/// base64url alphabet, which has no `.`, `/`, `%` or `\` to climb out of the directory with.
pub fn is_valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The host to redirect to, from the request's single `Host` header, without its port; IPv6
/// addresses in brackets. `None` when missing, repeated or not a DNS name or IP address.
pub fn request_host(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(header::HOST).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_host(value.to_str().ok()?)
}

/// Splits `host[:port]` and validates the host: a DNS name (normalised to lower case), an IPv4
/// address or a bracketed IPv6 address. Anything else, including an invalid port, is `None`.
pub fn parse_host(value: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = inside.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        };
        let host = if let Ok(ip) = host.parse::<Ipv4Addr>() {
            ip.to_string()
        } else if is_dns_name(host) {
            host.to_ascii_lowercase()
        } else {
            return None;
        };
        (host, port)
    };
    if let Some(port) = port {
        if port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return None;
        }
    }
    Some(host)
}

/// A host name: dot-separated labels of 1 to 63 letters, digits, `-` or `_` (seen in the wild),
/// not starting or ending with `-`, at most 253 characters; one trailing dot allowed.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The redirect target: `https://host[:port]target`, the port left out when it is 443. A target
/// that is not a path (`*` of `OPTIONS *`) becomes `/`.
pub fn location(host: &str, port: u16, target: &str) -> String {
    let target = if target.starts_with('/') { target } else { "/" };
    if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_base64url_only() {
        assert!(is_valid_token(
            "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
        ));
        assert!(is_valid_token("a-b_c"));
        assert!(is_valid_token(&"a".repeat(256)));
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "..%2f",
            "%2e%2e",
            "a.txt",
            "a\\b",
            "a b",
            "é",
            &"a".repeat(257),
        ] {
            assert!(!is_valid_token(bad), "{bad:?} should be refused");
        }
    }

    #[test]
    fn hosts_are_validated_and_their_port_dropped() {
        assert_eq!(parse_host("example.com"), Some("example.com".into()));
        assert_eq!(parse_host("Example.COM:8080"), Some("example.com".into()));
        assert_eq!(parse_host("example.com."), Some("example.com.".into()));
        assert_eq!(parse_host("my_host"), Some("my_host".into()));
        assert_eq!(parse_host("192.0.2.1:80"), Some("192.0.2.1".into()));
        assert_eq!(parse_host("[::1]"), Some("[::1]".into()));
        assert_eq!(
            parse_host("[2001:DB8::1]:8080"),
            Some("[2001:db8::1]".into())
        );
        for bad in [
            "",
            ":80",
            "evil.com/path",
            "evil.com@x",
            "a b",
            "host:",
            "host:80:90",
            "host:99999",
            "host:8o",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[not-ip]:80",
            "::1",
            "-bad.example",
            "a..b",
            "evil.com\\@x",
            "x\"onload",
            "%65vil.com",
        ] {
            assert_eq!(parse_host(bad), None, "{bad:?} should be refused");
        }
    }

    #[test]
    fn host_header_must_be_single() {
        let mut h = HeaderMap::new();
        assert_eq!(request_host(&h), None);
        h.append(header::HOST, HeaderValue::from_static("a.example"));
        assert_eq!(request_host(&h), Some("a.example".into()));
        h.append(header::HOST, HeaderValue::from_static("b.example"));
        assert_eq!(request_host(&h), None);
    }

    #[test]
    fn locations_keep_path_and_query_and_drop_443() {
        assert_eq!(
            location("a.example", 443, "/x?y=1"),
            "https://a.example/x?y=1"
        );
        assert_eq!(location("a.example", 8443, "/"), "https://a.example:8443/");
        assert_eq!(location("[::1]", 8443, "/p"), "https://[::1]:8443/p");
        assert_eq!(location("a.example", 443, "*"), "https://a.example/");
        assert_eq!(
            location("a.example", 443, "//evil.example/"),
            "https://a.example//evil.example/"
        );
    }

    #[test]
    fn webroot_must_be_a_directory() {
        let dir = std::env::temp_dir().join(format!("sidecar-webroot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create dir");
        let file = dir.join("file");
        std::fs::write(&file, b"x").expect("write file");
        assert!(check_webroot(&dir).is_ok());
        let err = check_webroot(&file).expect_err("a file");
        assert!(
            err.to_string().contains("--acme-webroot")
                && err.to_string().contains("not a directory"),
            "{err}"
        );
        let err = check_webroot(&dir.join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn challenges_stay_inside_the_webroot() {
        let base =
            std::env::temp_dir().join(format!("sidecar-challenge-test-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join(CHALLENGE_DIR)).expect("create dirs");
        std::fs::write(base.join("secret"), b"secret").expect("write secret");
        std::fs::write(root.join(CHALLENGE_DIR).join("good"), b"key-auth").expect("write token");
        std::fs::write(
            root.join(CHALLENGE_DIR).join("big"),
            vec![b'x'; 64 * 1024 + 1],
        )
        .expect("write big");
        std::fs::create_dir_all(root.join(CHALLENGE_DIR).join("dir")).expect("create dir");
        std::os::unix::fs::symlink(base.join("secret"), root.join(CHALLENGE_DIR).join("out"))
            .expect("symlink");
        std::os::unix::fs::symlink(
            root.join(CHALLENGE_DIR).join("good"),
            root.join(CHALLENGE_DIR).join("in"),
        )
        .expect("symlink");
        let root = check_webroot(&root).expect("webroot");
        let read = |t: &str| read_challenge(root.clone(), t.to_string());
        assert_eq!(read("good").await, Some(Bytes::from_static(b"key-auth")));
        assert_eq!(read("in").await, Some(Bytes::from_static(b"key-auth")));
        assert_eq!(read("missing").await, None);
        assert_eq!(read("out").await, None);
        assert_eq!(read("dir").await, None);
        assert_eq!(read("big").await, None);
        let _ = std::fs::remove_dir_all(&base);
    }
}
