//! The daemon's control socket, for the commands that ask the running daemon rather than the
//! engine: `spawner rollout` (replace outdated sidecars now) and the roll-out column of
//! `spawner status` (the daemon's view: what it would render, what failed, the pause).
//!
//! An abstract Unix socket, `tls-sidecar/spawner/<label prefix>`: scoped to the daemon's network
//! namespace (in a container: `docker exec <spawner> spawner rollout --all`), so nothing on the
//! file system to create, clean up or leave behind. Only a peer of the daemon's own user (or
//! root) is answered. One request per connection, one line each way, every read and write under
//! a deadline and a size bound; connections are served one at a time, so a stalled client costs
//! one slot for [`IO_TIMEOUT`] at most.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// How long one request may take to arrive or its answer to be written.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to answer a request (it answers at its next turn).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest request line: a command and a container name.
const MAX_REQUEST: u64 = 1024;
/// Longest answer a client reads (the status view of every target).
const MAX_ANSWER: u64 = 16 << 20;
/// Connections the kernel queues on the socket.
const BACKLOG: i32 = 16;
/// Requests queued for the daemon at most; more are answered "busy".
pub(crate) const QUEUE: usize = 8;

/// The socket's name for a label prefix (several spawners, each with its own prefix, can share
/// a namespace).
pub(crate) fn socket_name(prefix: &str) -> String {
    format!("tls-sidecar/spawner/{prefix}")
}

/// What `spawner rollout` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ask {
    All,
    /// A target by container name.
    Target(String),
}

impl Ask {
    fn line(&self) -> String {
        match self {
            Ask::All => "rollout all".to_string(),
            Ask::Target(name) => format!("rollout target {name}"),
        }
    }
}

/// A request for the daemon's loop, and where its answer goes.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) ask: Ask,
    pub(crate) answer: oneshot::Sender<String>,
}

/// One request line, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Status,
    Rollout(Ask),
}

fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    match line.split_once(' ') {
        None if line == "status" => Ok(Command::Status),
        Some(("rollout", "all")) => Ok(Command::Rollout(Ask::All)),
        Some(("rollout", rest)) => match rest.split_once(' ') {
            Some(("target", name)) if !name.is_empty() && !name.contains(char::is_control) => {
                Ok(Command::Rollout(Ask::Target(name.to_string())))
            }
            _ => Err("expected: rollout all | rollout target NAME".to_string()),
        },
        _ => Err("expected: status | rollout all | rollout target NAME".to_string()),
    }
}

/// The daemon's side: answers until `shutdown`. `view`: the last turn's roll-out view (JSON);
/// roll-out requests go to `requests`, and `wake` wakes the loop to answer them. When the name
/// is taken (another daemon with this prefix in this namespace), logs it and returns: the
/// daemon runs on without a control socket.
pub(crate) async fn serve(
    prefix: String,
    requests: mpsc::Sender<Request>,
    view: Arc<Mutex<String>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let name = socket_name(&prefix);
    let listener = match shared::abstract_socket::bind(&name, BACKLOG) {
        Ok(l) => l,
        Err(error) => {
            tracing::warn!(socket = %name, %error, "no control socket: `spawner rollout` cannot reach this daemon");
            return;
        }
    };
    tracing::debug!(socket = %name, "control socket listening");
    let own_uid = shared::abstract_socket::own_uid();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(error) => {
                    tracing::debug!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let answered = tokio::time::timeout(
            ANSWER_TIMEOUT + 2 * IO_TIMEOUT,
            answer(stream, own_uid, &requests, &view, &wake),
        )
        .await;
        if let Ok(Err(why)) = answered {
            tracing::debug!(%why, "control request refused");
        }
    }
}

/// Whether a peer of user `peer` may use the socket of a daemon running as `own`.
fn allowed(peer: u32, own: u32) -> bool {
    peer == own || peer == 0
}

/// Reads one request from `stream` and writes its answer.
async fn answer(
    stream: UnixStream,
    own_uid: u32,
    requests: &mpsc::Sender<Request>,
    view: &Mutex<String>,
    wake: &Notify,
) -> Result<(), String> {
    let peer = stream.peer_cred().map_err(|e| e.to_string())?;
    if !allowed(peer.uid(), own_uid) {
        return Err(format!("peer uid {} is not the daemon's", peer.uid()));
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    tokio::time::timeout(IO_TIMEOUT, limited.read_line(&mut line))
        .await
        .map_err(|_| "request not received in time".to_string())?
        .map_err(|e| e.to_string())?;
    let reply = match parse(&line) {
        Err(why) => format!("error: {why}"),
        Ok(Command::Status) => view.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        Ok(Command::Rollout(ask)) => relay(ask, requests, wake).await,
    };
    let mut reply = reply.into_bytes();
    reply.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, write.write_all(&reply))
        .await
        .map_err(|_| "answer not taken in time".to_string())?
        .map_err(|e| e.to_string())
}

/// Passes a roll-out request to the loop and waits for its answer.
async fn relay(ask: Ask, requests: &mpsc::Sender<Request>, wake: &Notify) -> String {
    let (tx, rx) = oneshot::channel();
    if requests.try_send(Request { ask, answer: tx }).is_err() {
        return "error: busy: too many requests queued, try again".to_string();
    }
    wake.notify_one();
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        _ => "error: the daemon did not answer in time".to_string(),
    }
}

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the spawner daemon on its control socket @{socket}: {reason} (run this where `spawner run` runs, e.g. `docker exec <spawner container> spawner ...`, with the same --label-prefix)")]
pub struct Unreachable {
    socket: String,
    reason: String,
}

/// The client's side: sends `line`, returns the daemon's answer.
async fn request(prefix: &str, line: &str) -> Result<String, Unreachable> {
    let socket = socket_name(prefix);
    let fail = |reason: String| Unreachable {
        socket: socket.clone(),
        reason,
    };
    let stream = shared::abstract_socket::connect(&socket).map_err(|e| fail(e.to_string()))?;
    let (read, mut write) = stream.into_split();
    let mut out = format!("{line}\n").into_bytes();
    out.truncate(MAX_REQUEST as usize);
    tokio::time::timeout(IO_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| fail("request not taken in time".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let mut answer = String::new();
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_ANSWER));
    tokio::time::timeout(
        ANSWER_TIMEOUT + 2 * IO_TIMEOUT,
        limited.read_line(&mut answer),
    )
    .await
    .map_err(|_| fail("no answer in time".into()))?
    .map_err(|e| fail(e.to_string()))?;
    if answer.is_empty() {
        return Err(fail("it closed the connection without an answer".into()));
    }
    Ok(answer.trim_end().to_string())
}

/// `spawner rollout`: the daemon's answer; `Err` with the answer when it refused.
pub(crate) async fn rollout(
    prefix: &str,
    ask: &Ask,
) -> Result<Result<String, String>, Unreachable> {
    let answer = request(prefix, &ask.line()).await?;
    Ok(match answer.strip_prefix("error: ") {
        Some(why) => Err(why.to_string()),
        None => Ok(answer),
    })
}

/// The daemon's roll-out view (JSON), for `spawner status`.
pub(crate) async fn status(prefix: &str) -> Result<String, Unreachable> {
    request(prefix, "status").await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_anything_else_is_refused() {
        assert_eq!(parse("status\n"), Ok(Command::Status));
        assert_eq!(parse("rollout all\n"), Ok(Command::Rollout(Ask::All)));
        assert_eq!(
            parse("rollout target web-1\r\n"),
            Ok(Command::Rollout(Ask::Target("web-1".into())))
        );
        for bad in [
            "",
            "status now",
            "rollout",
            "rollout target ",
            "rollout x",
            "rm -rf /",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("rollout target a\u{1b}b").is_err());
        assert_eq!(Ask::Target("w".into()).line(), "rollout target w");
    }

    #[test]
    fn only_the_daemons_user_or_root_is_answered() {
        assert!(allowed(1000, 1000));
        assert!(allowed(0, 1000));
        assert!(!allowed(1001, 1000));
        assert!(allowed(0, 0));
        assert!(!allowed(65534, 0));
    }

    /// Sends raw `bytes` on the control socket of `prefix`; the answer line, if any.
    async fn raw(prefix: &str, bytes: &[u8]) -> String {
        let stream = shared::abstract_socket::connect(&socket_name(prefix)).expect("connect");
        let (read, mut write) = stream.into_split();
        let _ = write.write_all(bytes).await;
        let mut answer = String::new();
        let mut read = BufReader::new(read);
        let _ = tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut answer)).await;
        answer
    }

    #[tokio::test]
    async fn garbage_and_oversized_requests_get_an_error_and_the_next_one_is_answered() {
        let prefix = format!("control-hostile-{}", std::process::id());
        let (tx, _rx) = mpsc::channel(QUEUE);
        let view = Arc::new(Mutex::new("{}".to_string()));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            prefix.clone(),
            tx,
            view,
            Arc::new(Notify::new()),
            stop.clone(),
        ));
        let mut garbage = String::new();
        for _ in 0..100 {
            if shared::abstract_socket::connect(&socket_name(&prefix)).is_ok() {
                garbage = raw(&prefix, b"\x00\x01 DROP TABLE\n").await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(garbage.starts_with("error: expected"), "{garbage:?}");
        let oversized = raw(&prefix, &vec![b'a'; 64 * 1024]).await;
        assert!(oversized.starts_with("error: expected"), "{oversized:?}");
        assert_eq!(status(&prefix).await.expect("answered"), "{}");
        stop.cancel();
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_request_reaches_the_loop_and_its_answer_the_client() {
        let prefix = format!("control-test-{}", std::process::id());
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let view = Arc::new(Mutex::new("{\"paused\":null}".to_string()));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            prefix.clone(),
            tx,
            view,
            Arc::new(Notify::new()),
            stop.clone(),
        ));
        let lp = tokio::spawn(async move {
            let r = rx.recv().await.unwrap();
            assert_eq!(r.ask, Ask::Target("web".into()));
            r.answer.send("queued: web".into()).unwrap();
        });
        let mut answer = None;
        for _ in 0..100 {
            match rollout(&prefix, &Ask::Target("web".into())).await {
                Ok(a) => {
                    answer = Some(a);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert_eq!(answer, Some(Ok("queued: web".to_string())));
        assert_eq!(status(&prefix).await.unwrap(), "{\"paused\":null}");
        lp.await.unwrap();
        stop.cancel();
        server.await.unwrap();
        let e = status(&prefix).await.unwrap_err().to_string();
        assert!(e.contains("cannot reach the spawner daemon"), "{e}");
    }
}
