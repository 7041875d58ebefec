//! What every gRPC server of the project starts with: transport limits,
//! health, reflection (v1 and v1alpha, for grpcurl of every age), logging and
//! the shutdown signal.

use std::{sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, Method};
use tonic::transport::{Server, server::Router};
use tonic_web::GrpcWebLayer;
use tower::{
    layer::util::{Identity, Stack},
    util::{Either, option_layer},
};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    admission::{AdmissionLayer, Limits},
    config::CommonConfig,
    observe::{Metrics, ObserveLayer},
};
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use proto::FILE_DESCRIPTOR_SET;

/// Most concurrent HTTP/2 streams (calls) one connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Most bytes of request headers (metadata) accepted.
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// The layers every server here puts around its services: when gRPC-Web is
/// on, CORS (preflights answered for the allowed origins) and the gRPC-Web
/// translation come first, so everything inside sees plain gRPC; then
/// observation (so refused calls are counted too), then admission (see
/// [`crate::admission`]), which refuses what it cannot take on at once.
pub type Layers = Stack<
    AdmissionLayer,
    Stack<
        ObserveLayer,
        Stack<
            UniformBodyLayer,
            Stack<Either<GrpcWebLayer, Identity>, Stack<Either<CorsLayer, Identity>, Identity>>,
        >,
    >,
>;

/// Gives the responses of the layers inside it tonic's body type, which
/// the gRPC-Web translation expects of what it wraps.
#[derive(Debug, Clone, Copy, Default)]
pub struct UniformBodyLayer;

impl<S> tower::Layer<S> for UniformBodyLayer {
    type Service = UniformBody<S>;

    fn layer(&self, inner: S) -> UniformBody<S> {
        UniformBody(inner)
    }
}

/// See [`UniformBodyLayer`].
#[derive(Debug, Clone)]
pub struct UniformBody<S>(S);

impl<S, Req, B> tower::Service<Req> for UniformBody<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move { Ok(response.await?.map(tonic::body::Body::new)) })
    }
}

/// Request headers a gRPC-Web browser client may send.
const GRPC_WEB_REQUEST_HEADERS: [&str; 7] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "traceparent",
    "x-request-id",
];
/// Response headers a browser client may read: the status, its message and
/// its details (`BadRequest` field violations, `RetryInfo`).
const GRPC_WEB_RESPONSE_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

/// The CORS policy for gRPC-Web from `origins`; `None` when the list is
/// empty (gRPC-Web off).
pub fn grpc_web_cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let names = |names: &[&'static str]| -> Vec<HeaderName> {
        names.iter().map(|n| HeaderName::from_static(n)).collect()
    };
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::POST])
            .allow_headers(names(&GRPC_WEB_REQUEST_HEADERS))
            .expose_headers(names(&GRPC_WEB_RESPONSE_HEADERS))
            .max_age(Duration::from_secs(24 * 3600)),
    )
}

/// A tonic server with the limits every service here runs under: bounded
/// streams per connection (announced in SETTINGS), calls admitted within
/// [`crate::admission`]'s bounds (excess refused at once with
/// RESOURCE_EXHAUSTED), bounded metadata, reset-stream floods cut off,
/// keepalive that notices dead peers, connections recycled (a graceful
/// GOAWAY) after `MAX_CONNECTION_AGE_SECS`, and a per-call timeout. With
/// `tls`, it speaks TLS only (and demands client certificates if the
/// settings say so).
pub fn builder(
    config: &CommonConfig,
    metrics: Arc<Metrics>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<Server<Layers>, tonic::transport::Error> {
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let cors = grpc_web_cors(&config.grpc_web_allowed_origins);
    let grpc_web = cors.is_some().then(GrpcWebLayer::new);
    Ok(server
        // Browsers speak gRPC-Web over HTTP/1.1 when there is no TLS.
        .accept_http1(grpc_web.is_some())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_local_error_reset_streams(Some(256))
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        // No grace period: with one, tonic 0.14 skips the graceful GOAWAY and
        // only cuts the connection when the grace runs out.
        .max_connection_age(config.max_connection_age)
        .tcp_nodelay(true)
        .timeout(config.request_timeout)
        .layer(option_layer(cors))
        .layer(option_layer(grpc_web))
        .layer(UniformBodyLayer)
        .layer(ObserveLayer::new(metrics))
        .layer(AdmissionLayer::new(Limits::new(
            config.max_concurrent_calls,
            config.request_message_timeout,
        ))))
}

/// Adds reflection (v1 and v1alpha) to `router`, unless `enabled` is false:
/// the files of the contract that define `services` (full names) and what
/// they import, plus `grpc.health.v1` and the `google.rpc` error details. A
/// client sees what this server serves and nothing else: no other service
/// of the contract resolves here.
pub fn with_reflection<L>(
    router: Router<L>,
    enabled: bool,
    services: &[&str],
) -> Result<Router<L>, tonic_reflection::server::Error> {
    if !enabled {
        return Ok(router);
    }
    let files = files_serving(services);
    let configure = || {
        let builder = services.iter().fold(
            tonic_reflection::server::Builder::configure(),
            |builder, name| builder.with_service_name(*name),
        );
        builder
            .with_service_name("grpc.health.v1.Health")
            .register_file_descriptor_set(files.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so clients can decode BadRequest.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    Ok(router
        .add_service(configure().build_v1()?)
        .add_service(configure().build_v1alpha()?))
}

/// The contract's files that define any of `services`, with everything
/// they import.
fn files_serving(services: &[&str]) -> FileDescriptorSet {
    // Compiled into the binary by the build: a set that does not decode is
    // a broken build, not a runtime condition.
    let all =
        FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the contract's descriptors decode");
    let defines = |file: &FileDescriptorProto| {
        file.service
            .iter()
            .any(|s| services.contains(&format!("{}.{}", file.package(), s.name()).as_str()))
    };
    let mut wanted: Vec<String> = all
        .file
        .iter()
        .filter(|f| defines(f))
        .map(|f| f.name().to_owned())
        .collect();
    let mut i = 0;
    while let Some(name) = wanted.get(i).cloned() {
        if let Some(file) = all.file.iter().find(|f| f.name() == name) {
            for dependency in &file.dependency {
                if !wanted.contains(dependency) {
                    wanted.push(dependency.clone());
                }
            }
        }
        i += 1;
    }
    FileDescriptorSet {
        file: all
            .file
            .into_iter()
            .filter(|f| wanted.iter().any(|w| w == f.name()))
            .collect(),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), the signals a supervisor or a
/// terminal sends to ask for a graceful stop.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Asks the gRPC server at `addr` for its overall health: `Ok` only when it
/// answers `SERVING` within a few seconds. An unspecified listen address
/// (`0.0.0.0`, `::`) is checked on loopback. Used by `healthcheck`
/// subcommands, so container health checks need no extra tool.
pub async fn healthcheck(addr: std::net::SocketAddr) -> Result<(), String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| format!("health check failed: {}", e.message()))?
            .into_inner()
            .status();
        if status == ServingStatus::Serving {
            Ok(())
        } else {
            Err(format!("{addr} is {}", status.as_str_name()))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .unwrap_or_else(|_| Err(format!("{addr} did not answer within 5 s")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_describes_its_own_services_and_their_imports_only() {
        let files = files_serving(&["blog.posts.v1.PostService"]);
        let mut names: Vec<&str> = files.file.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "blog/posts/v1/posts.proto",
                "google/protobuf/empty.proto",
                "google/protobuf/timestamp.proto"
            ]
        );
        let files = files_serving(&["blog.auth.v1.UserService", "blog.auth.v1.AuthService"]);
        assert!(
            files
                .file
                .iter()
                .all(|f| f.name() != "blog/auth/v1/events.proto")
        );
        assert!(
            files
                .file
                .iter()
                .any(|f| f.name() == "blog/auth/v1/users.proto")
        );
    }
}
