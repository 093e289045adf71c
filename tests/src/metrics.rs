//! Reading the sidecar's Prometheus metrics in tests.

use http::StatusCode;

use crate::client;
use crate::sidecar::Sidecar;
use crate::wait::{poll_until_async, STEP};

/// The sum of every sample of `name` (a bare name, or a name with its `{labels}`) in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn metrics(sc: &Sidecar) -> String {
    let reply = client::plain_get(sc.admin_addr(), "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text()
}

/// Polls `/metrics` until `name` satisfies `ok`.
pub async fn wait_metric(sc: &Sidecar, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let admin = sc.admin_addr();
    let ok = &ok;
    poll_until_async(
        STEP,
        &format!("metric {name} to reach the expected value"),
        || async move {
            let text = client::plain_get(admin, "/metrics").await.text();
            let v = metric(&text, name);
            ok(v).then_some(v)
        },
    )
    .await
}
