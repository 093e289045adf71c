//! Deadlines for tests: every await on a peer is bounded, so a hang fails fast and says what hung,
//! and readiness is polled for, never slept for.

use std::future::Future;
use std::time::Duration;

/// Budget for one network step (connect, handshake, one response). Generous because CI shares two
/// cores with compilers; short enough that a hang fails in seconds, not minutes.
pub const STEP: Duration = Duration::from_secs(10);

/// How often [`poll_until`] re-checks: fast enough to keep tests quick, slow enough not to spin.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Awaits `fut` for at most `limit`; panics naming `what` if it does not finish in time.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Reads until the peer closes, for at most `limit` (panicking naming `what`). A TCP close
/// without TLS close_notify also counts as the end: the bytes are what the user sees.
pub async fn read_to_close(
    limit: Duration,
    what: &str,
    mut rd: impl tokio::io::AsyncRead + Unpin,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    within(limit, what, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("reading {what}: {e}"),
            }
        }
    })
    .await;
    out
}

/// Re-evaluates `check` until it returns `Some`, panicking naming `what` once `limit` has passed.
pub async fn poll_until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("gave up after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Like [`poll_until`] for checks that need I/O (an admin request, a connect attempt).
pub async fn poll_until_async<T, Fut>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Ok(Some(value)) = tokio::time::timeout(remaining, check()).await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("gave up after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
