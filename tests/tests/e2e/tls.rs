//! TLS on both services, and mutual TLS from the posts-service to the
//! auth-service, with certificates made for the test: plaintext, a missing
//! client certificate and one from another CA are all refused.

use std::{path::Path, time::Duration};

use proto::auth::{
    CreateUserRequest, GetJwksRequest, LoginRequest, auth_service_client::AuthServiceClient,
    user_service_client::UserServiceClient,
};
use proto::posts::{CreatePostRequest, post_service_client::PostServiceClient};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::helpers::{
    auth_config, bearer, common_config, eventually, posts_config, start_auth_with, start_posts_with,
};

/// A CA that can sign leaf certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names`, and its key, in PEM.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

async fn connect(
    addr: std::net::SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Endpoint::from_shared(format!("{scheme}://localhost:{}", addr.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Whether a GetJwks over `channel` succeeds.
async fn served(channel: Result<Channel, tonic::transport::Error>) -> bool {
    match channel {
        Ok(channel) => AuthServiceClient::new(channel)
            .get_jwks(GetJwksRequest {})
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_of_our_ca() {
    testkit::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("blog test CA");
    let rogue = Ca::new("someone else's CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let (auth_cert, auth_key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let (posts_cert, posts_key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = ca.leaf(&["posts-client"]);
    let (rogue_cert, rogue_key) = rogue.leaf(&["posts-client"]);

    let common = common_config();
    let mail = testkit::smtp::SmtpSink::start().await;
    let mut auth = auth_config(&testkit::TestDatabase::new("auth").await, &mail, &common);
    auth.auth.auth_tls_cert_file = Some(write(dir.path(), "auth.pem", &auth_cert));
    auth.auth.auth_tls_key_file = Some(write(dir.path(), "auth.key", &auth_key));
    auth.auth.auth_tls_client_ca_file = Some(ca_file.clone());
    let (auth_service, _) = start_auth_with(auth).await;
    let addr = auth_service.addr;

    let trusted = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("localhost")
    };
    let ours = || trusted().identity(Identity::from_pem(&client_cert, &client_key));

    assert!(
        served(connect(addr, Some(ours())).await).await,
        "a client of our CA is served"
    );
    assert!(
        !served(connect(addr, None).await).await,
        "plaintext is refused"
    );
    assert!(
        !served(connect(addr, Some(trusted())).await).await,
        "no client certificate is refused"
    );
    let theirs = trusted().identity(Identity::from_pem(&rogue_cert, &rogue_key));
    assert!(
        !served(connect(addr, Some(theirs)).await).await,
        "another CA's certificate is refused"
    );

    // The posts-service reaches the auth-service over mutual TLS and serves TLS.
    let mut posts = posts_config(
        &testkit::TestDatabase::new("posts").await,
        format!("https://localhost:{}", addr.port()),
        &common,
    );
    posts.posts.auth_service_ca_file = Some(ca_file);
    posts.posts.posts_client_cert_file = Some(write(dir.path(), "client.pem", &client_cert));
    posts.posts.posts_client_key_file = Some(write(dir.path(), "client.key", &client_key));
    posts.posts.posts_tls_cert_file = Some(write(dir.path(), "posts.pem", &posts_cert));
    posts.posts.posts_tls_key_file = Some(write(dir.path(), "posts.key", &posts_key));
    let posts_service = start_posts_with(posts).await;

    let auth_channel = connect(addr, Some(ours())).await.unwrap();
    let mut users = UserServiceClient::new(auth_channel.clone());
    let id = testkit::unique_id();
    users
        .create_user(CreateUserRequest {
            username: format!("tls_{id}"),
            email: format!("tls_{id}@example.com"),
            password: "a long enough password".into(),
        })
        .await
        .unwrap();
    let token = AuthServiceClient::new(auth_channel)
        .login(LoginRequest {
            username_or_email: format!("tls_{id}"),
            password: "a long enough password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;

    let posts_channel = connect(posts_service.addr, Some(trusted())).await.unwrap();
    let client = PostServiceClient::new(posts_channel);
    // Keys arrive over mutual TLS; then the token verifies.
    eventually(
        Duration::from_secs(10),
        "the posts-service to verify tokens",
        || {
            let mut client = client.clone();
            let token = token.clone();
            async move {
                client
                    .create_post(bearer(
                        &token,
                        CreatePostRequest {
                            title: "over TLS".into(),
                            content: "x".into(),
                        },
                    ))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    let plaintext_refused = match connect(posts_service.addr, None).await {
        Err(_) => true,
        Ok(channel) => PostServiceClient::new(channel)
            .create_post(bearer(
                &token,
                CreatePostRequest {
                    title: "plain".into(),
                    content: "x".into(),
                },
            ))
            .await
            .is_err(),
    };
    assert!(
        plaintext_refused,
        "plaintext to the posts-service is refused"
    );
    drop(client);
}
