//! `spawn_app()`: a fresh database and an auth-service on 127.0.0.1:0, with
//! typed clients and helpers for the steps most tests share.

use std::{sync::Arc, time::Duration};

use auth_service::{
    AppState, Application, Config,
    store::{self, Store},
};
use proto::auth::{
    CreateUserRequest, LoginRequest, TokenResponse, User, auth_service_client::AuthServiceClient,
    user_event_service_client::UserEventServiceClient, user_service_client::UserServiceClient,
};
use testkit::TestDatabase;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Status, transport::Channel};

/// The internal token every test app uses.
pub const INTERNAL_TOKEN: &str = "test-internal-token";

/// A store over `db`, as the service opens it.
pub async fn open_store(db: &TestDatabase) -> Arc<dyn Store> {
    store::connect(&db.url, Duration::from_secs(5))
        .await
        .expect("opening the store")
}

/// A running auth-service and clients for it.
pub struct TestApp {
    /// Its database.
    pub db: TestDatabase,
    /// Where its gRPC side listens.
    pub grpc_addr: std::net::SocketAddr,
    /// Its data directory (mail files, local avatars).
    pub data_dir: std::path::PathBuf,
    /// Where its HTTP side listens.
    pub http_addr: std::net::SocketAddr,
    /// Its handler state, to look behind the API.
    pub state: Arc<AppState>,
    /// Its clock: advance it instead of sleeping.
    pub clock: shared::time::Clock,
    /// `UserService` client.
    pub users: UserServiceClient<Channel>,
    /// `AuthService` client.
    pub auth: AuthServiceClient<Channel>,
    /// `UserEventService` client.
    pub events: UserEventServiceClient<Channel>,
    /// Stops the server.
    stop: Option<oneshot::Sender<()>>,
    /// The server task.
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts an auth-service on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestDatabase::new("auth").await, |_| {}).await
}

/// Starts an auth-service on `db`.
pub async fn spawn_app_on(db: TestDatabase) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// Starts an auth-service on `db`, with `adjust` applied to its settings.
pub async fn spawn_app_with(db: TestDatabase, adjust: impl FnOnce(&mut Config)) -> TestApp {
    testkit::init_logs();

    let data_dir = tempfile::tempdir().expect("temporary directory").keep();
    let mut config = Config::for_tests(data_dir.clone());
    config.auth.auth_database_url = db.url.clone().into();
    config.auth.mail.mail_from = "Blog <no-reply@blog.test>".into();
    config.auth.mail.frontend_url = Some("http://frontend.test".into());
    config.common.internal_token = Some(INTERNAL_TOKEN.into());
    config.common.token_leeway = Duration::from_secs(5);
    config.common.clock = shared::time::Clock::adjustable();
    adjust(&mut config);
    let clock = config.common.clock.clone();
    let app = Application::build(config)
        .await
        .expect("building the auth-service");
    let addr = app.local_addr();
    let http_addr = app.http_addr();
    let state = app.state();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connecting to the auth-service");
    TestApp {
        grpc_addr: addr,
        db,
        data_dir,
        http_addr,
        state,
        clock,
        users: UserServiceClient::new(channel.clone()),
        auth: AuthServiceClient::new(channel.clone()),
        events: UserEventServiceClient::new(channel),
        stop: Some(stop),
        server: Some(server),
    }
}

/// Starts an auth-service that mails through a real SMTP server on
/// loopback, and that server.
pub async fn app_with_mail() -> (TestApp, testkit::smtp::SmtpSink) {
    let sink = testkit::smtp::SmtpSink::start().await;
    let url = sink.url.clone();
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.auth.mail.smtp_url = Some(url.into());
    })
    .await;
    (app, sink)
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
}

impl TestUser {
    /// Fresh, unique credentials.
    pub fn generate() -> Self {
        let id = testkit::unique_id();
        Self {
            username: format!("user_{id}"),
            email: format!("user_{id}@example.com"),
            password: format!("pw-{id}-long-enough"),
        }
    }
}

impl TestApp {
    /// Stops the server gracefully and returns its database for a restart.
    pub async fn stop(mut self) -> TestDatabase {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server ran cleanly");
        }
        self.db.clone()
    }

    /// Registers `user`.
    pub async fn create_user(&self, user: &TestUser) -> Result<User, Status> {
        self.users
            .clone()
            .create_user(CreateUserRequest {
                username: user.username.clone(),
                email: user.email.clone(),
                password: user.password.clone(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Logs in with a username or email and a password.
    pub async fn login(
        &self,
        username_or_email: &str,
        password: &str,
    ) -> Result<TokenResponse, Status> {
        self.auth
            .clone()
            .login(LoginRequest {
                username_or_email: username_or_email.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Registers a fresh user and logs them in.
    pub async fn signed_up(&self) -> (TestUser, User, TokenResponse) {
        let user = TestUser::generate();
        let created = self.create_user(&user).await.expect("registration");
        let tokens = self
            .login(&user.username, &user.password)
            .await
            .expect("login");
        (user, created, tokens)
    }

    /// How many users the database holds.
    pub async fn count_users(&self) -> i64 {
        self.db.count("SELECT COUNT(*) FROM users").await
    }

    /// The first message the file mailer has written (waiting up to 5 s for
    /// it), or `None`. Only whole messages carry the `.eml` name.
    pub async fn mail_file(&self) -> Option<std::path::PathBuf> {
        let dir = self.data_dir.join("mail");
        for _ in 0..100 {
            let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
                entries
                    .map(|entry| entry.unwrap().path())
                    .find(|path| path.extension().is_some_and(|e| e == "eml"))
            });
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub use testkit::grpc::{assert_status, bearer, violated_fields};
