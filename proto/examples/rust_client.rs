//! A Rust client of the blog backend, on the stubs of this crate alone.
//!
//! ```sh
//! cargo run --release &                                # the stack
//! cargo run -p blog-proto --example rust_client        # or: -- http://auth:50051 http://posts:50052
//! ```
//!
//! Registers a user, logs in, writes a post and lists the newest posts.

use proto::{
    auth::{
        CreateUserRequest, LoginRequest, auth_service_client::AuthServiceClient,
        user_service_client::UserServiceClient,
    },
    posts::{CreatePostRequest, ListPostsRequest, post_service_client::PostServiceClient},
};
use tonic::Request;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let auth_url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let posts_url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50052".into());

    let mut users = UserServiceClient::connect(auth_url.clone()).await?;
    let mut auth = AuthServiceClient::connect(auth_url).await?;
    let mut posts = PostServiceClient::connect(posts_url).await?;

    let suffix = std::process::id();
    let username = format!("rustacean_{suffix}");
    let password = format!("ferris-says-{suffix}");
    let user = users
        .create_user(CreateUserRequest {
            username: username.clone(),
            email: format!("{username}@example.com"),
            password: password.clone(),
        })
        .await?
        .into_inner();
    println!("registered {} (id {})", user.username, user.id);

    let tokens = auth
        .login(LoginRequest {
            username_or_email: username,
            password,
        })
        .await?
        .into_inner();

    // The token goes in the `authorization` metadata of each call.
    let mut request = Request::new(CreatePostRequest {
        title: "Hello from Rust".into(),
        content: "Written with the generated tonic client.".into(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", tokens.access_token).parse()?,
    );
    let post = posts.create_post(request).await?.into_inner();
    println!("wrote post {}: {:?}", post.id, post.title);

    let page = posts
        .list_posts(ListPostsRequest {
            page_size: 5,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("{} post(s) in all; newest first:", page.total_size);
    for post in page.posts {
        let author = post.author.map(|a| a.username).unwrap_or_default();
        println!("  #{} {:?} by {author}", post.id, post.title);
    }
    Ok(())
}
