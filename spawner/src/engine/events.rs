//! The event subscription: subscribe once, and when the stream breaks resubscribe with capped
//! backoff from the last event's time. Every event and every (re)subscription wakes the reconcile
//! loop, which then re-lists everything: the stream says *when* to look, and which containers the
//! listing may still show wrongly (recorded in [`EventReports`]), never by itself *what* is true.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::EventMessageTypeEnum;
use futures_util::StreamExt;
use shared::backoff::Backoff;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::event_reports::EventReports;
use crate::engine::Engine;

/// Resubscribing after the stream breaks: 250 ms, doubled per failure up to 5 s, so a restarting
/// engine is picked up within 5 s. Reset by every event received.
const RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Whether an event's container is one of ours: a target (opt-in label under `prefix`, or
/// byfahrer's) or a sidecar (our labels). The engine puts a container's labels in its events'
/// attributes; an event without attributes counts as ours. Events of other containers neither
/// wake the loop nor cost an inspect, so a busy engine does not make the spawner busy.
pub(crate) fn concerns_us(
    prefix: &str,
    attributes: Option<&std::collections::HashMap<String, String>>,
) -> bool {
    let Some(attributes) = attributes else {
        return true;
    };
    attributes.keys().any(|k| {
        k == shared::schema::BYFAHRER_PROXY_IMAGE_LABEL
            || k.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Runs until `shutdown`.
pub(crate) async fn watch(
    engine: Arc<Engine>,
    prefix: String,
    reports: Arc<Mutex<EventReports>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut since = unix_now();
    let mut retry = RETRY.retry();
    loop {
        let delay = match engine.events(Some(since)).await {
            Err(e) => {
                let delay = retry.failed();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "cannot subscribe to docker events");
                delay
            }
            Ok(mut stream) => {
                tracing::debug!(since, "subscribed to docker events");
                reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .resubscribed();
                // A full listing after every (re)subscription catches whatever happened unseen.
                wake.notify_one();
                let delay = loop {
                    let item = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(ev)) => {
                            retry.reset();
                            if let Some(t) = ev.time {
                                since = since.max(t);
                            }
                            let action = ev.action.as_deref().unwrap_or("");
                            let id = ev
                                .actor
                                .as_ref()
                                .and_then(|a| a.id.as_deref())
                                .unwrap_or("");
                            let attributes = ev.actor.as_ref().and_then(|a| a.attributes.as_ref());
                            if ev.typ == Some(EventMessageTypeEnum::IMAGE) {
                                tracing::debug!(action, image = id, "docker image event");
                                reports
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .image_changed();
                                wake.notify_one();
                                continue;
                            }
                            if !concerns_us(&prefix, attributes) {
                                continue;
                            }
                            tracing::debug!(action, container = id, "docker event");
                            if !id.is_empty() {
                                reports.lock().unwrap_or_else(|p| p.into_inner()).record(
                                    id,
                                    action,
                                    tokio::time::Instant::now(),
                                );
                            }
                            wake.notify_one();
                        }
                        Some(Err(e)) => {
                            let delay = retry.failed();
                            tracing::warn!(error = %e, retry_in = ?delay, "docker event stream broke");
                            break delay;
                        }
                        None => {
                            let delay = retry.failed();
                            tracing::warn!(retry_in = ?delay, "docker event stream ended");
                            break delay;
                        }
                    }
                };
                engine.reconnect();
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_events_of_our_containers_concern_us() {
        let target = attrs(&[("name", "app"), ("tls-sidecar.proxy-image", "x")]);
        let sidecar = attrs(&[("tls-sidecar.managed-by", "spawner"), ("image", "s")]);
        let byfahrer = attrs(&[("org.qnib.byfahrer.proxy-image", "x")]);
        let other = attrs(&[("name", "db"), ("tls-sidecarx.proxy-image", "x")]);
        assert!(concerns_us("tls-sidecar", Some(&target)));
        assert!(concerns_us("tls-sidecar", Some(&sidecar)));
        assert!(concerns_us("tls-sidecar", Some(&byfahrer)));
        assert!(!concerns_us("tls-sidecar", Some(&other)));
        assert!(!concerns_us("other", Some(&target)));
        assert!(concerns_us("tls-sidecar", None));
    }

    #[test]
    fn resubscribing_backs_off_from_250_ms_to_5_s() {
        let mut retry = RETRY.retry();
        let delays: Vec<_> = (0..7).map(|_| retry.failed().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        retry.reset();
        assert_eq!(retry.failed(), Duration::from_millis(250));
    }
}
