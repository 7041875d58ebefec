//! The auth-service's public keys, as this service knows them: fetched with
//! `GetJwks` at start (with retry and backoff), refreshed in the background
//! and when a token names an unknown `kid` (at most once per
//! [`MIN_REFETCH`]), and kept in the database so that a restart while the
//! auth-service is down still verifies tokens. Never fetched per request.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use proto::auth::{GetJwksRequest, auth_service_client::AuthServiceClient};
use shared::{trace::TraceContext, verify::Verifier};

use crate::{backoff, store::Store};

/// The shortest time between two fetches triggered by unknown `kid`s, so a
/// flood of forged tokens cannot turn into a flood of calls.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);

/// Loads the cached key set into `verifier`, if there is one. Returns whether
/// keys were loaded.
pub async fn load_cached(store: &dyn Store, verifier: &Verifier) -> bool {
    let cached = match store.cached_jwks().await {
        Ok(Some(json)) => json,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read cached keys");
            return false;
        }
    };
    match shared::jwk::from_document(&cached).map(|keys| verifier.set_keys(&keys)) {
        Some(Ok(_)) => {
            tracing::info!("verifying tokens with cached keys until the auth-service answers");
            true
        }
        _ => {
            tracing::warn!("cached keys are unusable; waiting for the auth-service");
            false
        }
    }
}

/// Keeps `verifier`'s keys current until `shutdown`: fetches now (retrying
/// with backoff until it succeeds), then every `interval`, and soon after
/// `unknown_kid` is notified.
pub async fn refresh(
    mut client: AuthServiceClient<Channel>,
    verifier: Arc<Verifier>,
    store: Arc<dyn Store>,
    unknown_kid: Arc<Notify>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let mut delays = backoff::delays(Duration::from_secs(10));
        loop {
            match fetch(&mut client, &verifier, store.as_ref()).await {
                Ok(()) => break,
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot fetch the auth-service's keys");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        let fetched = tokio::time::Instant::now();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = unknown_kid.notified() => {
                // Rate limit: whatever the number of unknown kids, one fetch
                // per MIN_REFETCH; a kid seen long after the last fetch (a
                // rotation) is looked up at once.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(fetched + MIN_REFETCH) => {}
                }
            }
        }
    }
}

async fn fetch(
    client: &mut AuthServiceClient<Channel>,
    verifier: &Verifier,
    store: &dyn Store,
) -> anyhow::Result<()> {
    // The auth-service logs the fetch under this trace too.
    let trace = TraceContext::root();
    let mut request = tonic::Request::new(GetJwksRequest {});
    trace.inject(request.metadata_mut());
    let keys = client.get_jwks(request).await?.into_inner().keys;
    if keys.is_empty() {
        anyhow::bail!("the auth-service published no keys");
    }
    // The set rarely changes: only a new one is cached and logged.
    if verifier.set_keys(&keys)? {
        if let Err(e) = store.save_jwks(&shared::jwk::to_document(&keys)).await {
            tracing::warn!(error = %e, "cannot cache the fetched keys");
        }
        tracing::info!(
            keys = keys.len(),
            trace_id = trace.trace_id(),
            "verification keys updated"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proto::auth::Jwk;

    #[test]
    fn key_sets_survive_their_stored_form() {
        let keys = vec![Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: "k1".into(),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
            x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into(),
        }];
        assert_eq!(
            shared::jwk::from_document(&shared::jwk::to_document(&keys)),
            Some(keys)
        );
        assert_eq!(shared::jwk::from_document("not json"), None);
    }
}
