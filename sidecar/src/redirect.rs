//! The redirect listener: plain HTTP on `--redirect-listen` that answers every request with a
//! `308` to the same host and path over https, except ACME http-01 challenges
//! (`/.well-known/acme-challenge/<token>`), which are served from `--acme-webroot` when set,
//! else answered `<token>.<thumbprint>` with `--acme-thumbprint` (stateless: valid for that
//! ACME account alone, whichever host runs its client).
//!
//! Nothing a client sends reaches the `Location` header or the file system unvalidated: the Host
//! must be a DNS name or an IP address (the port is replaced), and a token must be base64url
//! text, so it cannot name anything but a file in the challenge directory.
//!
//! Whoever can write to the webroot must not be able to make us read a file outside it, even by
//! swapping a file for a symlink between a check and the open. So symbolic links are never
//! followed: the webroot is opened once at start, and each challenge is opened beneath that
//! handle one path component at a time with `O_NOFOLLOW`; then the opened file itself must be a
//! regular file (no FIFO, which would block, no device) of at most [`MAX_CHALLENGE_BYTES`].

use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
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
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::ConfigError;
use shared::accept::{self, Accepted};
use shared::fs::{ReadError, RegularFile};

/// The directories from the webroot down to challenge files (certbot's `--webroot` layout),
/// opened one at a time so none of them can be a symlink.
const CHALLENGE_DIRS: [&str; 2] = [".well-known", "acme-challenge"];
/// How each directory on the way is opened: as a handle for lookups only (`O_PATH` needs search
/// permission, not read, like a lookup by path), and failing on a symlink (`ENOTDIR`, as
/// `O_NOFOLLOW` does not refuse a link with `O_PATH` but `O_DIRECTORY` then does).
const DIR_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// How a challenge file is opened: failing on a symlink (`ELOOP`), and `O_NONBLOCK` so a FIFO
/// put in its place fails the regular-file check after the open instead of blocking in it.
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);
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

/// The `--acme-webroot` directory, held open from start: challenges are looked up beneath this
/// handle, so renaming or replacing the directory's path later changes nothing (replacing the
/// directory itself, rather than its contents, needs a restart).
#[derive(Debug, Clone)]
pub(crate) struct Webroot {
    /// The canonical path, for logs.
    path: PathBuf,
    dir: Arc<OwnedFd>,
}

impl Webroot {
    /// Resolves `dir` (links in the operator's own path are followed, once, here) and opens it.
    pub(crate) fn open(dir: &Path) -> Result<Webroot, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            flag: "--acme-webroot",
            value: dir.display().to_string(),
            reason,
        };
        let path =
            std::fs::canonicalize(dir).map_err(|e| invalid(format!("cannot be resolved: {e}")))?;
        let fd = rustix::fs::open(&path, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            Errno::NOTDIR => invalid("not a directory".to_string()),
            e => invalid(format!("cannot be opened: {e}")),
        })?;
        Ok(Webroot {
            path,
            dir: Arc::new(fd),
        })
    }
}

/// What the redirect listener needs.
#[derive(Debug, Clone)]
pub(crate) struct Redirect {
    /// The https port put in Locations.
    pub port: u16,
    /// The webroot, if challenges are served from files.
    pub webroot: Option<Webroot>,
    /// The ACME account thumbprint, if every challenge is answered for that account.
    pub thumbprint: Option<Arc<str>>,
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
}

/// Serves redirects (and challenges) on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, redirect: Redirect, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(redirect = %addr, port = redirect.port, acme = redirect.webroot.is_some(), acme_stateless = redirect.thumbprint.is_some(), "redirect listening");
    }
    let redirect = Arc::new(redirect);
    let mut listener =
        accept::Listener::new(listener, "redirect", stop.clone()).with_limit(MAX_CONNECTIONS);
    while let Some(Accepted {
        stream,
        peer,
        permit,
    }) = listener.accept().await
    {
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
            tokio::pin!(conn);
            // At the stop (a shutdown, or the listener handed over), the answer under way is
            // finished; an idle connection closes at once.
            let served = async {
                tokio::select! {
                    res = conn.as_mut() => res,
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
                    }
                }
            };
            match tokio::time::timeout(CONNECTION_LIFETIME, served).await {
                Ok(Err(error)) => debug!(%peer, %error, "redirect connection error"),
                Err(_) => debug!(%peer, "redirect connection too slow, closed"),
                Ok(Ok(())) => {}
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
    let answers = redirect.webroot.is_some() || redirect.thumbprint.is_some();
    if let (true, Some(token)) = (answers, path.strip_prefix(CHALLENGE_PREFIX)) {
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
        if let Some(webroot) = &redirect.webroot {
            if let Some(body) = read_challenge(webroot.clone(), token.to_string()).await {
                return text(StatusCode::OK, body);
            }
        }
        return match &redirect.thumbprint {
            Some(thumbprint) => text(StatusCode::OK, key_authorization(token, thumbprint)),
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
/// of at most [`MAX_CHALLENGE_BYTES`] reached from the webroot without a symbolic link.
async fn read_challenge(webroot: Webroot, token: String) -> Option<Bytes> {
    let task = tokio::task::spawn_blocking(move || {
        let path = CHALLENGE_DIRS
            .iter()
            .fold(webroot.path.clone(), |p, d| p.join(d))
            .join(&token);
        let file = match open_challenge(&webroot.dir, &token) {
            Ok(f) => f,
            Err(Errno::NOENT) => {
                debug!(path = %path.display(), "no such acme challenge file");
                return None;
            }
            // ELOOP from the file's O_NOFOLLOW, ENOTDIR from a directory's O_DIRECTORY.
            Err(error @ (Errno::LOOP | Errno::NOTDIR)) => {
                warn!(path = %path.display(), %error, "acme challenge path has a symbolic link or a non-directory on the way, refused");
                return None;
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot open acme challenge file");
                return None;
            }
        };
        // Checked on what was opened, not on the path, which may name something else by now.
        let body = match RegularFile::from_opened(file).and_then(|f| f.read(MAX_CHALLENGE_BYTES)) {
            Ok(body) => body,
            Err(ReadError::NotRegular { kind }) => {
                warn!(path = %path.display(), %kind, "acme challenge path is not a regular file, refused");
                return None;
            }
            Err(ReadError::TooLarge { limit }) => {
                warn!(path = %path.display(), limit, "acme challenge file too large, refused");
                return None;
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read acme challenge file");
                return None;
            }
        };
        // An emptied file is a withdrawn answer: the spawner cannot delete files in a sidecar's
        // volume, only overwrite them, so it empties an answer once its order is over.
        if body.is_empty() {
            return None;
        }
        Some(Bytes::from(body))
    });
    task.await.ok().flatten()
}

/// Opens `<webroot>/.well-known/acme-challenge/<token>` beneath the webroot handle, one component
/// at a time, failing at the first symbolic link. Blocking.
fn open_challenge(webroot: &OwnedFd, token: &str) -> Result<File, Errno> {
    let [well_known, challenges] = CHALLENGE_DIRS;
    let dir = rustix::fs::openat(webroot, well_known, DIR_FLAGS, Mode::empty())?;
    let dir = rustix::fs::openat(&dir, challenges, DIR_FLAGS, Mode::empty())?;
    let file = rustix::fs::openat(&dir, token, FILE_FLAGS, Mode::empty())?;
    Ok(File::from(file))
}

// ---- pure rules ----

/// The key authorization of `token` for the account of `thumbprint` (RFC 8555 section 8.1):
/// the body of a stateless http-01 answer. `token` is a valid token ([`is_valid_token`]).
pub(crate) fn key_authorization(token: &str, thumbprint: &str) -> Bytes {
    Bytes::from(format!("{token}.{thumbprint}"))
}

/// Whether `token` can be a challenge file name: 1 to [`MAX_TOKEN_LEN`] characters of the
/// base64url alphabet, which has no `.`, `/`, `%` or `\` to climb out of the directory with.
pub(crate) fn is_valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The host to redirect to, from the request's single `Host` header, without its port; IPv6
/// addresses in brackets. `None` when missing, repeated or not a DNS name or IP address.
pub(crate) fn request_host(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(header::HOST).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_host(value.to_str().ok()?)
}

/// Splits `host[:port]` and validates the host (the one rule, in `shared::addr`).
pub(crate) use shared::addr::authority_host as parse_host;

/// The redirect target: `https://host[:port]target`, the port left out when it is 443. A target
/// that is not a path (`*` of `OPTIONS *`) becomes `/`.
pub(crate) fn location(host: &str, port: u16, target: &str) -> String {
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

    impl Webroot {
        /// The canonical path of the directory.
        fn path(&self) -> &Path {
            &self.path
        }
    }

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

    /// A scratch directory for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("sidecar-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }

        /// `root/` with an empty challenge directory, and `outside/` with the same layout
        /// holding a secret named like a token, for links to point at.
        fn with_webroot(name: &str) -> Scratch {
            let scratch = Scratch::new(name);
            std::fs::create_dir_all(scratch.challenges()).expect("create challenge dir");
            let outside = scratch.0.join("outside/.well-known/acme-challenge");
            std::fs::create_dir_all(&outside).expect("create outside dir");
            std::fs::write(outside.join("tok"), b"secret").expect("write secret");
            scratch
        }

        fn root(&self) -> PathBuf {
            self.0.join("root")
        }

        fn challenges(&self) -> PathBuf {
            self.root().join(".well-known/acme-challenge")
        }

        fn outside(&self) -> PathBuf {
            self.0.join("outside")
        }

        async fn read(&self, token: &str) -> Option<Bytes> {
            let webroot = Webroot::open(&self.root()).expect("webroot");
            read_challenge(webroot, token.to_string()).await
        }

        /// Why opening `token` fails: tells a refusal (logged as a warning) from a miss.
        fn open_error(&self, token: &str) -> Option<Errno> {
            let webroot = Webroot::open(&self.root()).expect("webroot");
            open_challenge(&webroot.dir, token).err()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn webroot_must_be_a_directory() {
        let dir = Scratch::new("webroot-test");
        let file = dir.0.join("file");
        std::fs::write(&file, b"x").expect("write file");
        let webroot = Webroot::open(&dir.0).expect("a directory");
        assert_eq!(
            webroot.path(),
            std::fs::canonicalize(&dir.0).expect("canonical")
        );
        let err = Webroot::open(&file).expect_err("a file");
        assert!(
            err.to_string().contains("--acme-webroot")
                && err.to_string().contains("not a directory"),
            "{err}"
        );
        let err = Webroot::open(&dir.0.join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[tokio::test]
    async fn regular_challenge_files_are_served_up_to_the_size_limit() {
        let dir = Scratch::with_webroot("challenge-files");
        std::fs::write(dir.challenges().join("good"), b"key-auth").expect("write token");
        std::fs::write(dir.challenges().join("big"), vec![b'x'; 64 * 1024 + 1]).expect("big");
        std::fs::write(dir.challenges().join("max"), vec![b'x'; 64 * 1024]).expect("max");
        std::fs::create_dir(dir.challenges().join("dir")).expect("create dir");
        assert_eq!(
            dir.read("good").await,
            Some(Bytes::from_static(b"key-auth"))
        );
        assert_eq!(dir.read("max").await.map(|b| b.len()), Some(64 * 1024));
        assert_eq!(dir.read("missing").await, None);
        std::fs::write(dir.challenges().join("withdrawn"), b"").expect("empty token");
        assert_eq!(
            dir.read("withdrawn").await,
            None,
            "an emptied answer is gone"
        );
        assert_eq!(dir.read("dir").await, None);
        assert_eq!(dir.read("big").await, None);

        // No challenge directories at all is a plain miss too.
        let bare = Scratch::new("challenge-bare");
        std::fs::create_dir(bare.root()).expect("create root");
        assert_eq!(bare.read("good").await, None);
    }

    #[tokio::test]
    async fn a_symlinked_token_is_refused_wherever_it_points() {
        let dir = Scratch::with_webroot("challenge-token-links");
        let ch = dir.challenges();
        std::fs::write(ch.join("good"), b"key-auth").expect("write token");
        let outside = dir.outside().join(".well-known/acme-challenge/tok");
        std::os::unix::fs::symlink(&outside, ch.join("out")).expect("symlink out");
        std::os::unix::fs::symlink(ch.join("good"), ch.join("in")).expect("symlink in");
        std::os::unix::fs::symlink("good", ch.join("relative")).expect("relative symlink");
        std::os::unix::fs::symlink(ch.join("nowhere"), ch.join("dangling")).expect("dangling");
        for token in ["out", "in", "relative", "dangling"] {
            assert_eq!(dir.read(token).await, None, "{token}");
            assert_eq!(dir.open_error(token), Some(Errno::LOOP), "{token}");
        }
        assert_eq!(dir.open_error("missing"), Some(Errno::NOENT));
        assert_eq!(
            dir.read("good").await,
            Some(Bytes::from_static(b"key-auth"))
        );
    }

    #[tokio::test]
    async fn symlinked_challenge_directories_are_refused() {
        // `.well-known` a link to a directory outside holding `acme-challenge/tok`.
        let dir = Scratch::with_webroot("challenge-link-well-known");
        std::fs::remove_dir_all(dir.root().join(".well-known")).expect("remove .well-known");
        std::os::unix::fs::symlink(
            dir.outside().join(".well-known"),
            dir.root().join(".well-known"),
        )
        .expect("symlink .well-known");
        assert_eq!(dir.read("tok").await, None);
        assert_eq!(dir.open_error("tok"), Some(Errno::NOTDIR));

        // `acme-challenge` a link to a directory outside holding `tok`.
        let dir = Scratch::with_webroot("challenge-link-acme");
        std::fs::remove_dir(dir.challenges()).expect("remove acme-challenge");
        std::os::unix::fs::symlink(
            dir.outside().join(".well-known/acme-challenge"),
            dir.challenges(),
        )
        .expect("symlink acme-challenge");
        assert_eq!(dir.read("tok").await, None);
        assert_eq!(dir.open_error("tok"), Some(Errno::NOTDIR));

        // Even a link that stays inside the webroot.
        let dir = Scratch::with_webroot("challenge-link-inside");
        std::fs::remove_dir(dir.challenges()).expect("remove acme-challenge");
        std::fs::create_dir(dir.root().join("elsewhere")).expect("create elsewhere");
        std::fs::write(dir.root().join("elsewhere/tok"), b"key-auth").expect("write token");
        std::os::unix::fs::symlink("../elsewhere", dir.challenges()).expect("symlink inside");
        assert_eq!(dir.read("tok").await, None);
        assert_eq!(dir.open_error("tok"), Some(Errno::NOTDIR));
    }

    #[tokio::test]
    async fn a_fifo_token_is_refused_without_blocking() {
        let dir = Scratch::with_webroot("challenge-fifo");
        let fifo = dir.challenges().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        match tokio::time::timeout(Duration::from_secs(5), dir.read("fifo")).await {
            Ok(body) => assert_eq!(body, None),
            Err(_) => {
                // Unblock the reader stuck in open(2) so the test ends instead of hanging.
                let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
                panic!("reading a FIFO challenge blocked");
            }
        }
    }
}
