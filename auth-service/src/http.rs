//! The plain HTTP side of the auth-service (`AUTH_HTTP_ADDR`), for what is
//! not RPC: the public keys as a standard JWKS document, liveness and
//! readiness probes, and the locally stored avatars.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use shared::harness::Readiness;

use crate::{AppState, avatars::CACHE_CONTROL};

/// The routes.
pub fn router(state: Arc<AppState>, readiness: Readiness) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move { shared::http::readiness_response(&readiness) }),
        )
        .route("/metrics", get(metrics))
        .route("/avatars/{*key}", get(avatar))
        .with_state(state)
}

/// The same keys as `GetJwks`, for any JWKS library.
async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    let keys: Vec<_> = state
        .tokens
        .keys()
        .jwks()
        .iter()
        .map(|k| json!({"kty": k.kty, "crv": k.crv, "kid": k.kid, "alg": k.alg, "use": k.r#use, "x": k.x}))
        .collect();
    let mut response = Json(json!({ "keys": keys })).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// Prometheus metrics.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    shared::http::metrics_response(&state.metrics, state.store.pool_status(), accept)
}

/// A stored avatar. Keys are random and never reused, so the object may be
/// cached for ever.
async fn avatar(State(state): State<Arc<AppState>>, Path(key): Path<String>) -> Response {
    if !state.avatars.is_local() {
        return StatusCode::NOT_FOUND.into_response();
    }
    match state.avatars.get(&key).await {
        Ok(Some(bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static(CACHE_CONTROL),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::error!(error = ?e, "serving an avatar");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
