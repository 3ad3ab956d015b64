//! agenthook's registration of its push URL with bitHuman, and the heartbeat `ping`s that keep
//! "pushes arrive" known while no agent ends.

use std::time::{Duration, Instant};

/// Make sure bitHuman pushes to `public_url`: find agenthook's registration (a second start
/// finds the one the first made, by URL, and its secret in storage), or register once and keep
/// the secret upstream shows only this once. Failures are logged, never fatal: polling works
/// without pushes.
pub async fn ensure_registration(lifecycle: &crate::lifecycle::Lifecycle, public_url: &str) {
    let (store, upstream, inbox) = (&lifecycle.store, &lifecycle.upstream, &lifecycle.push);
    let stored = match store.upstream_webhook().await {
        Ok(stored) => stored.filter(|s| s.url == public_url),
        Err(error) => {
            tracing::warn!(%error, "could not read the stored upstream webhook registration");
            None
        }
    };
    if let Some(stored) = &stored {
        inbox.add_secret(&stored.secret);
    }
    let listed = match upstream.list_webhooks().await {
        Ok(listed) => listed,
        Err(error) => {
            tracing::warn!(%error, "could not list upstream webhook registrations; polling carries on");
            return;
        }
    };
    if let Some(existing) = listed.iter().find(|r| r.url == public_url) {
        if stored.as_ref().is_some_and(|s| s.id == existing.id) {
            tracing::info!(id = %existing.id, "upstream webhook registration found");
            inbox.set_registration(&existing.id);
            return;
        }
        if inbox.is_enabled() {
            tracing::info!(id = %existing.id, "upstream webhook registration found; using the configured secret");
            inbox.set_registration(&existing.id);
            return;
        }
        // Registered, but its secret is known nowhere here (storage was lost): replace it.
        tracing::warn!(id = %existing.id, "upstream webhook registration without a known secret; registering again");
        if let Err(error) = upstream.delete_webhook(&existing.id).await {
            tracing::warn!(%error, "could not delete the old upstream webhook registration");
        }
    }
    let created = match upstream.register_webhook(public_url).await {
        Ok(created) => created,
        Err(error) => {
            tracing::warn!(%error, "could not register the upstream webhook; polling carries on");
            return;
        }
    };
    let secret = created.secret.unwrap_or_default();
    let record = crate::store::UpstreamWebhook {
        id: created.id,
        url: public_url.to_owned(),
        secret: secret.clone(),
    };
    if let Err(error) = store.save_upstream_webhook(&record).await {
        tracing::warn!(%error, "could not store the upstream webhook secret; it works until restart");
    }
    inbox.add_secret(&secret);
    inbox.set_registration(&record.id);
    tracing::info!(id = %record.id, url = public_url, "registered the upstream webhook");
}

/// While agenthook has its own registration: ask upstream for a `ping` now and then
/// ([`PushInbox::heartbeat_every`]), so pushes are known to arrive (and routine polls slowed)
/// even while no agent ends, and known to have stopped when pings stop coming. One request per
/// five minutes by default, on the read budget.
pub async fn heartbeat(
    lifecycle: crate::lifecycle::Lifecycle,
    signals: std::sync::Arc<crate::signals::Signals>,
) {
    let every = lifecycle.push.heartbeat_every();
    while !signals.is_shutting_down() {
        let mut pause = every;
        if let Some(id) = lifecycle.push.registration() {
            let now = lifecycle.clock.now();
            if lifecycle.upstream.budgets().read.try_acquire(now) {
                if let Err(error) = lifecycle.upstream.test_webhook(&id).await {
                    tracing::debug!(%error, "upstream webhook ping request failed");
                }
            } else {
                // The read budget is busy: try again shortly.
                pause = Duration::from_secs(1).min(every);
            }
        }
        let wake = Instant::now() + pause;
        while Instant::now() < wake && !signals.is_shutting_down() {
            tokio::time::sleep(Duration::from_millis(250).min(every)).await;
        }
    }
}
