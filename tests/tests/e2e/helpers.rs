//! `spawn_stack()`: an auth-service and a posts-service on 127.0.0.1:0, wired
//! together as in production, with typed clients and the steps tests share.

use std::{future::Future, net::SocketAddr, time::Duration};

use proto::{
    auth::{
        CreateUserRequest, LoginRequest, TokenResponse, User,
        auth_service_client::AuthServiceClient, user_service_client::UserServiceClient,
    },
    posts::{CreatePostRequest, Post, post_service_client::PostServiceClient},
};
use shared::config::CommonConfig;
use testkit::{TestDatabase, smtp::SmtpSink};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How soon a change in one service must show in the other.
pub const PROPAGATION: Duration = Duration::from_secs(1);

/// A service running in this process.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its HTTP side listens.
    pub http_addr: SocketAddr,
    /// Stops it.
    stop: Option<oneshot::Sender<()>>,
    /// Its task.
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn spawn<F>(
        addr: SocketAddr,
        http_addr: SocketAddr,
        run: impl FnOnce(oneshot::Receiver<()>) -> F,
    ) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Self {
            addr,
            http_addr,
            stop: Some(stop),
            task: Some(tokio::spawn(run(stopped))),
        }
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("service task")
                .expect("service ran cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Both services and clients for them.
pub struct Stack {
    /// The auth-service.
    pub auth_service: Running,
    /// The posts-service.
    pub posts_service: Running,
    /// `UserService` client.
    pub users: UserServiceClient<Channel>,
    /// `AuthService` client.
    pub auth: AuthServiceClient<Channel>,
    /// `PostService` client.
    pub posts: PostServiceClient<Channel>,
    /// The posts-service's database, kept for restarts.
    posts_db: TestDatabase,
    /// The auth-service's internals (its signing key, for forged tokens).
    pub auth_state: std::sync::Arc<auth_service::AppState>,
    /// The auth-service's database.
    _auth_db: TestDatabase,
    /// Settings both services were started with.
    common: CommonConfig,
    /// Where the auth-service's mail goes.
    pub mail: SmtpSink,
}

/// The settings both services of one stack share.
pub fn common_config() -> CommonConfig {
    CommonConfig {
        token_leeway: Duration::from_secs(5),
        internal_token: Some(format!("internal-{}", testkit::unique_id()).into()),
        data_dir: std::env::temp_dir().join(format!("blog-e2e-{}", testkit::unique_id())),
        ..CommonConfig::defaults()
    }
}

/// Starts both services on fresh databases and waits until the posts-service
/// is serving (it has the auth-service's keys).
pub async fn spawn_stack() -> Stack {
    spawn_stack_with(common_config()).await
}

/// [`spawn_stack`] with these shared settings.
pub async fn spawn_stack_with(common: CommonConfig) -> Stack {
    spawn_stack_adjusted(common, |_| {}).await
}

/// [`spawn_stack`] with these shared settings and the auth-service's
/// adjusted by `adjust`.
pub async fn spawn_stack_adjusted(
    common: CommonConfig,
    adjust: impl FnOnce(&mut auth_service::Config),
) -> Stack {
    testkit::init_logs();
    let auth_db = TestDatabase::new("auth").await;
    let mail = SmtpSink::start().await;
    let posts_db = TestDatabase::new("posts").await;

    let mut config = auth_config(&auth_db, &mail, &common);
    adjust(&mut config);
    let auth = auth_service::Application::build(config)
        .await
        .expect("building the auth-service");
    let auth_state = auth.state();
    let auth_service = Running::spawn(auth.local_addr(), auth.http_addr(), |stopped| {
        auth.run(async {
            let _ = stopped.await;
        })
    });
    let auth_channel = channel(auth_service.addr).await;

    let posts_service = start_posts(&posts_db, auth_service.addr, &common).await;
    let stack = Stack {
        users: UserServiceClient::new(auth_channel.clone()),
        auth: AuthServiceClient::new(auth_channel),
        posts: PostServiceClient::new(channel(posts_service.addr).await),
        auth_service,
        posts_service,
        posts_db,
        auth_state,
        _auth_db: auth_db,
        common,
        mail,
    };
    stack.wait_until_posts_serving().await;
    stack
}

/// A posts-service alone, pointed at an auth-service address where nothing
/// listens, on a fresh database: it has never had keys.
pub async fn spawn_posts_without_auth() -> (Running, PostServiceClient<Channel>, TestDatabase) {
    testkit::init_logs();
    let db = TestDatabase::new("posts").await;
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let posts = start_posts(&db, nowhere, &common_config()).await;
    let client = PostServiceClient::new(channel(posts.addr).await);
    (posts, client, db)
}

/// The overall health of the service at `addr`.
pub async fn health(addr: SocketAddr) -> ServingStatus {
    let mut health = HealthClient::new(channel(addr).await);
    match health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(response) => response.into_inner().status(),
        Err(_) => ServingStatus::Unknown,
    }
}

/// The posts-service's settings for a test, on port 0.
pub fn posts_config(
    db: &TestDatabase,
    auth_url: String,
    common: &CommonConfig,
) -> posts_service::Config {
    let mut config = posts_service::Config::for_tests(common.data_dir.clone());
    config.posts.posts_database_url = db.url.clone().into();
    config.posts.auth_service_url = auth_url;
    // Generous: tests of the limits set their own.
    config.posts.post_write_burst = 1_000;
    config.common = common.clone();
    config
}

async fn start_posts(db: &TestDatabase, auth_addr: SocketAddr, common: &CommonConfig) -> Running {
    start_posts_with(posts_config(db, format!("http://{auth_addr}"), common)).await
}

/// Starts a posts-service with `config`.
pub async fn start_posts_with(config: posts_service::Config) -> Running {
    let posts = posts_service::Application::build(config)
        .await
        .expect("building the posts-service");
    Running::spawn(posts.local_addr(), posts.http_addr(), |stopped| {
        posts.run(async {
            let _ = stopped.await;
        })
    })
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connecting")
}

/// The auth-service's settings for a test, on port 0.
pub fn auth_config(
    db: &TestDatabase,
    mail: &SmtpSink,
    common: &CommonConfig,
) -> auth_service::Config {
    let mut config = auth_service::Config::for_tests(common.data_dir.clone());
    config.auth.auth_database_url = db.url.clone().into();
    config.auth.mail.smtp_url = Some(mail.url.clone().into());
    config.auth.mail.mail_from = "Blog <no-reply@blog.test>".into();
    config.auth.mail.frontend_url = Some("http://frontend.test".into());
    // Generous: tests of the limits set their own.
    config.auth.limits.registration_burst = 1_000;
    config.common = common.clone();
    config
}

/// Starts an auth-service with `config`; returns it and its state.
pub async fn start_auth_with(
    config: auth_service::Config,
) -> (Running, std::sync::Arc<auth_service::AppState>) {
    let auth = auth_service::Application::build(config)
        .await
        .expect("building the auth-service");
    let state = auth.state();
    let running = Running::spawn(auth.local_addr(), auth.http_addr(), |stopped| {
        auth.run(async {
            let _ = stopped.await;
        })
    });
    (running, state)
}

/// A user with unique credentials.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Unique username.
    pub username: String,
    /// Unique email.
    pub email: String,
    /// A valid password.
    pub password: String,
    /// The id, once registered.
    pub id: i64,
    /// Access token of the latest login.
    pub token: String,
    /// Refresh token of the latest login.
    pub refresh_token: String,
}

impl Stack {
    /// The internal token both services share.
    pub fn internal_token(&self) -> String {
        use secrecy::ExposeSecret;
        self.common
            .internal_token
            .as_ref()
            .expect("stacks have an internal token")
            .expose_secret()
            .to_owned()
    }

    /// The posts-service's health, overall.
    pub async fn posts_health(&self) -> ServingStatus {
        health(self.posts_service.addr).await
    }

    async fn wait_until_posts_serving(&self) {
        eventually(
            Duration::from_secs(10),
            "the posts-service to serve",
            || async { self.posts_health().await == ServingStatus::Serving },
        )
        .await;
    }

    /// Another posts-service, on `db`, following this stack's
    /// auth-service; returned once it serves.
    pub async fn another_posts(&self, db: &TestDatabase) -> (Running, PostServiceClient<Channel>) {
        let running = start_posts(db, self.auth_service.addr, &self.common).await;
        let client = PostServiceClient::new(channel(running.addr).await);
        let addr = running.addr;
        eventually(
            Duration::from_secs(10),
            "the other posts-service to serve",
            || async { health(addr).await == ServingStatus::Serving },
        )
        .await;
        (running, client)
    }

    /// Stops the posts-service and starts it again on its database.
    pub async fn restart_posts(&mut self, between: impl Future<Output = ()>) {
        self.posts_service.stop().await;
        between.await;
        self.posts_service =
            start_posts(&self.posts_db, self.auth_service.addr, &self.common).await;
        self.posts = PostServiceClient::new(channel(self.posts_service.addr).await);
        self.wait_until_posts_serving().await;
    }

    /// Registers and logs in a fresh user.
    pub async fn user(&self) -> TestUser {
        let id = testkit::unique_id();
        let mut user = TestUser {
            username: format!("user_{id}"),
            email: format!("user_{id}@example.com"),
            password: format!("pw-{id}-long-enough"),
            id: 0,
            token: String::new(),
            refresh_token: String::new(),
        };
        let created: User = self
            .users
            .clone()
            .create_user(CreateUserRequest {
                username: user.username.clone(),
                email: user.email.clone(),
                password: user.password.clone(),
            })
            .await
            .expect("registration")
            .into_inner();
        user.id = created.id;
        let tokens = self.login(&user).await.expect("login");
        user.token = tokens.access_token;
        user.refresh_token = tokens.refresh_token;
        user
    }

    /// Logs `user` in again: a new session.
    pub async fn login(&self, user: &TestUser) -> Result<TokenResponse, Status> {
        self.auth
            .clone()
            .login(LoginRequest {
                username_or_email: user.username.clone(),
                password: user.password.clone(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Creates a post as `user`.
    pub async fn create_post(
        &self,
        user: &TestUser,
        title: &str,
        content: &str,
    ) -> Result<Post, Status> {
        self.posts
            .clone()
            .create_post(bearer(
                &user.token,
                CreatePostRequest {
                    title: title.into(),
                    content: content.into(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }
}

/// Polls `condition` until it holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("waited {within:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub use testkit::grpc::{assert_status, bearer, violated_fields};
