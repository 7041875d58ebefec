//! The blog's website: server-rendered HTML over the auth-service and the
//! posts-service, reached only through their gRPC API (the `proto` crate).
//! It is the "backend for frontend": the browser holds one sealed,
//! `HttpOnly` session cookie, and the tokens inside it never reach a page
//! script.
//!
//! - [`config`]: settings, and the session key.
//! - [`session`]: the sealed cookie and the CSRF secret.
//! - [`visitor`]: who is asking, with tokens refreshed on the way in.
//! - [`error`]: gRPC statuses as the pages a person expects.
//! - [`routes`]: the pages, one module per family.

pub mod config;
pub mod error;
pub mod routes;
pub mod session;
pub mod visitor;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use tonic::transport::{Channel, Endpoint};

use proto::{
    auth::{auth_service_client::AuthServiceClient, user_service_client::UserServiceClient},
    posts::post_service_client::PostServiceClient,
};

pub use config::Config;

use crate::{error::ErrorPage, session::Sealer};

/// What every handler shares.
pub struct App {
    /// Seals and opens session cookies.
    pub sealer: Sealer,
    /// Whether the site is served over HTTPS.
    pub secure: bool,
    /// The internal token, as call metadata, when configured.
    pub internal_token: Option<tonic::metadata::AsciiMetadataValue>,
    auth_channel: Channel,
    posts_channel: Channel,
}

impl App {
    /// An `AuthService` client.
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.auth_channel.clone())
    }

    /// A `UserService` client.
    pub fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.auth_channel.clone()).max_decoding_message_size(16 << 20)
    }

    /// A `PostService` client.
    pub fn posts(&self) -> PostServiceClient<Channel> {
        PostServiceClient::new(self.posts_channel.clone())
    }
}

/// Shared state as handlers receive it.
pub type Shared = Arc<App>;

/// The website, bound and ready to serve.
pub struct Website {
    listener: std::net::TcpListener,
    /// What each serving thread builds its [`App`] from, checked once here
    /// so that `run` has nothing left to fail on.
    parts: Parts,
    threads: usize,
}

/// The settings an [`App`] is made of, parsed.
#[derive(Clone)]
struct Parts {
    session_key: [u8; 32],
    secure: bool,
    internal_token: Option<tonic::metadata::AsciiMetadataValue>,
    auth: Endpoint,
    posts: Endpoint,
}

impl App {
    /// The shared state of one serving thread, with (lazy) channels to both
    /// services on that thread's runtime: the site starts even while they
    /// are down, and shows 503 pages until they answer.
    fn new(parts: Parts) -> Self {
        Self {
            sealer: Sealer::new(&parts.session_key, parts.secure),
            secure: parts.secure,
            internal_token: parts.internal_token,
            auth_channel: parts.auth.connect_lazy(),
            posts_channel: parts.posts.connect_lazy(),
        }
    }
}

impl Website {
    /// Binds the address and checks the settings; nothing is served until
    /// [`Website::run`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let endpoint = |url: &str| -> anyhow::Result<Endpoint> {
            Ok(Endpoint::from_shared(url.to_owned())?
                .connect_timeout(std::time::Duration::from_secs(2))
                .timeout(std::time::Duration::from_secs(30)))
        };
        let parts =
            Parts {
                session_key: config.session_key,
                secure: config.secure,
                internal_token: match &config.internal_token {
                    Some(token) => Some(token.parse().map_err(|_| {
                        anyhow::anyhow!("the internal token is not valid metadata")
                    })?),
                    None => None,
                },
                auth: endpoint(&config.auth_url)?,
                posts: endpoint(&config.posts_url)?,
            };
        let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "website listening");
        Ok(Self {
            listener: listener.into_std()?,
            parts,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Serves from `threads` threads instead of one per core.
    #[must_use]
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// Serves until `shutdown` resolves, then lets requests in flight end.
    ///
    /// One thread per core serves, each on a single-threaded runtime of its
    /// own with its own connections to the services, all accepting on the
    /// one listening socket. A page is a short chain of tasks (the page, a
    /// gRPC call, its HTTP/2 connection); run in the order they became
    /// ready, the calls of all the pages in progress on a thread leave in
    /// one write. A work-stealing runtime runs the task just woken first, so
    /// each call's headers and body went out in writes of their own.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..self.threads {
            let listener = self.listener.try_clone()?;
            let parts = self.parts.clone();
            let (mut stopped, ended) = (stopped.clone(), ended.clone());
            std::thread::Builder::new()
                .name(format!("web-{n}"))
                .spawn(move || {
                    let serving = || -> anyhow::Result<()> {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        runtime.block_on(async move {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            let app = Arc::new(App::new(parts));
                            let service =
                                router(app).into_make_service_with_connect_info::<visitor::Peer>();
                            axum::serve(listener, service)
                                .with_graceful_shutdown(async move {
                                    let _ = stopped.wait_for(|s| *s).await;
                                })
                                .await?;
                            Ok(())
                        })
                    };
                    let _ = ended.send(serving());
                })?;
        }
        drop(ended);
        // Until asked to stop, or until a thread stops on its own (which
        // stops the rest: never half a website).
        let mut outcome = tokio::select! {
            () = shutdown => Ok(()),
            end = ends.recv() => match end {
                Some(Ok(())) | None => Err(anyhow::anyhow!("a website thread stopped on its own")),
                Some(Err(e)) => Err(e),
            },
        };
        let _ = stop.send(true);
        while let Some(end) = ends.recv().await {
            if let (Ok(()), Err(e)) = (&outcome, end) {
                outcome = Err(e);
            }
        }
        outcome
    }
}

/// Every route, behind the security headers and the error pages.
pub fn router(app: Shared) -> Router {
    routes::router()
        .layer(middleware::from_fn_with_state(app.clone(), finish))
        .with_state(app)
}

/// The last word on every response: refuses cross-site form posts, renders
/// error pages (with a request id to quote) and adds the security headers.
async fn finish(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let request_id = RequestId::next();
    // Kept for an error page only: opening the cookie costs a decryption,
    // which the page's own handler has done already when all goes well.
    let is_get = request.method() == Method::GET;
    let uri = request.uri().clone();
    let mut cookies = axum::http::HeaderMap::new();
    for value in request.headers().get_all(header::COOKIE) {
        cookies.append(header::COOKIE, value.clone());
    }
    let cross_site = request.method() == Method::POST && !same_origin(&request);
    let mut response = if cross_site {
        ErrorPage::forbidden_cross_site().into_response()
    } else {
        next.run(request).await
    };
    if let Some(page) = response.extensions_mut().remove::<ErrorPage>() {
        // After logging in, a GET comes back where it was; a form goes home.
        let back = match uri.path_and_query() {
            Some(path) if is_get => path.as_str(),
            _ => "/",
        };
        let session = app.sealer.from_headers(&cookies);
        response = page.render(&app, back, request_id.as_str(), session);
    }
    let too_large = response.status() == StatusCode::PAYLOAD_TOO_LARGE;
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self' http: https:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "same-origin");
    if app.secure {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        );
    }
    // A body refused for its size was left unread: the connection cannot
    // carry another request, and saying so keeps a client from sending its
    // next one down a connection about to close.
    if too_large {
        set(headers, header::CONNECTION, "close");
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    headers.insert("x-request-id", request_id.header());
    response
}

/// A request's id, to quote from an error page and find in the logs: 16
/// hex digits, unique within the process (a counter scrambled by a
/// bijection keyed at random once per process, so that the ids of two
/// replicas do not collide in step). Not a secret, and not unguessable.
struct RequestId([u8; 16]);

impl RequestId {
    fn next() -> Self {
        use std::sync::{
            LazyLock,
            atomic::{AtomicU64, Ordering},
        };
        static KEY: LazyLock<u64> = LazyLock::new(|| {
            let mut key = [0u8; 8];
            aws_lc_rs::rand::fill(&mut key).expect("system randomness");
            u64::from_le_bytes(key)
        });
        static COUNT: AtomicU64 = AtomicU64::new(0);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 16];
        for (pair, byte) in id.chunks_exact_mut(2).zip(mix(n ^ *KEY).to_be_bytes()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        Self(id)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits")
    }

    fn header(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).expect("hex digits")
    }
}

/// splitmix64's finaliser: a bijection on `u64` that scatters every bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether a request comes from a page of this site: its `Origin` (or,
/// lacking one, its `Referer`) names the host it was sent to. A request
/// with neither is let through: the CSRF token still guards it.
fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match source {
        None => true,
        Some(source) => {
            let rest = source
                .strip_prefix("https://")
                .or_else(|| source.strip_prefix("http://"));
            rest.is_some_and(|rest| rest.split('/').next() == Some(host))
        }
    }
}

/// `GET /healthz`: the process is up.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: both services report SERVING (`grpc.health.v1`), so a
/// balancer sends no visitor here while a page could not be built.
async fn readyz(State(app): State<Shared>) -> Response {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let serving = |channel: Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
    };
    let (auth, posts) = tokio::join!(
        serving(app.auth_channel.clone()),
        serving(app.posts_channel.clone())
    );
    if auth && posts {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a service is not serving").into_response()
    }
}

/// Asks the website at `addr` for `/healthz`; exits the process with 1
/// unless it answers 200 (for container health checks).
pub async fn healthcheck(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let asked = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
        Ok(Ok(true)) => {}
        _ => {
            eprintln!("unhealthy: the website at {addr} does not answer /healthz");
            std::process::exit(1);
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Settings whose services answer nothing: the pages these tests ask
    /// for need no call.
    fn unreachable_services() -> Config {
        Config::for_tests("http://127.0.0.1:9".into(), "http://127.0.0.1:9".into())
    }

    /// A website with `config`, serving until the test ends.
    async fn serve(config: Config) -> SocketAddr {
        let site = Website::build(config).await.unwrap();
        let addr = site.local_addr();
        tokio::spawn(site.run(std::future::pending()));
        addr
    }

    /// The response head of `GET path` from a website.
    async fn head(addr: SocketAddr, path: &str) -> String {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: blog.test\r\nConnection: close\r\n\r\n");
        exchange(addr, &request)
            .await
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase()
    }

    /// The whole response to `request` (a request head, and a body if any).
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_first_visit_gets_its_csrf_secret_with_its_first_form_and_an_empty_one_opens_nothing()
    {
        let addr = serve(unreachable_services()).await;
        let page = exchange(
            addr,
            "GET /login HTTP/1.1\r\nHost: blog.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        let token = page
            .split(r#"name="csrf_token" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the login form carries a CSRF token");
        assert_eq!(token.len(), 43, "{page}");
        assert!(
            page.to_ascii_lowercase()
                .contains("set-cookie: blog_session=")
        );
        // A form posted without a session (so without a secret drawn) and
        // an empty token is refused, before anything is sent anywhere.
        let body = "csrf_token=&username=a&password=b";
        let forged = exchange(
            addr,
            &format!(
                "POST /login HTTP/1.1\r\nHost: blog.test\r\nConnection: close\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    }

    #[tokio::test]
    async fn every_response_has_a_request_id_of_its_own() {
        let addr = serve(unreachable_services()).await;
        let mut ids = std::collections::HashSet::new();
        for _ in 0..20 {
            let head = head(addr, "/healthz").await;
            let id = head
                .lines()
                .find_map(|line| line.strip_prefix("x-request-id: "))
                .expect("a request id")
                .to_owned();
            assert_eq!(id.len(), 16, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(ids.insert(id), "ids repeat");
        }
    }

    #[tokio::test]
    async fn over_https_cookies_are_secure_and_hsts_is_sent() {
        let mut config = unreachable_services();
        config.secure = true;
        let addr = serve(config).await;
        let login = head(addr, "/login").await;
        assert!(login.starts_with("http/1.1 200"), "{login}");
        assert!(
            login.contains("strict-transport-security: max-age="),
            "{login}"
        );
        assert!(
            login.contains("set-cookie: __host-blog_session="),
            "{login}"
        );
        assert!(login.contains("; secure"), "{login}");
        assert!(head(addr, "/healthz").await.starts_with("http/1.1 200"));
    }

    #[tokio::test]
    async fn a_site_on_several_threads_answers_every_connection_and_stops_when_asked() {
        let site = Website::build(unreachable_services())
            .await
            .unwrap()
            .with_threads(3);
        let addr = site.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(site.run(async {
            let _ = stopped.await;
        }));
        // Thirty connections at once, each taken by whichever thread
        // accepts it first.
        let heads = (0..30).map(|_| tokio::spawn(head(addr, "/healthz")));
        for answer in heads {
            let answer = answer.await.unwrap();
            assert!(answer.starts_with("http/1.1 200"), "{answer}");
        }
        stop.send(()).unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), running)
            .await
            .expect("every thread stops");
        ended.unwrap().unwrap();
        // No thread is left holding the socket open.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn over_plain_http_there_is_no_hsts() {
        let addr = serve(unreachable_services()).await;
        let login = head(addr, "/login").await;
        assert!(!login.contains("strict-transport-security"), "{login}");
        assert!(login.contains("set-cookie: blog_session="), "{login}");
    }
}
