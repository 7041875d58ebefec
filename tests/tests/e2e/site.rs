//! A website over a stack, and a cookie-keeping HTTP client that uses it as
//! a browser would: it follows no redirect by itself, keeps the session
//! cookie, and sends forms with the page's CSRF token and an `Origin`.

use std::net::SocketAddr;

use reqwest::{StatusCode, header};
use tokio::task::JoinHandle;

use crate::helpers::Stack;

/// A running website.
pub struct Site {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Site {
    /// A website over `stack`'s two services.
    pub async fn start(stack: &Stack) -> Self {
        Self::start_with(stack, None).await
    }

    /// A website that names its visitors' addresses to the auth-service
    /// with the stack's internal token.
    pub async fn start_forwarding(stack: &Stack) -> Self {
        Self::start_with(stack, Some(stack.internal_token())).await
    }

    async fn start_with(stack: &Stack, internal_token: Option<String>) -> Self {
        let mut config = web::Config::for_tests(
            format!("http://{}", stack.auth_service.addr),
            format!("http://{}", stack.posts_service.addr),
        );
        config.internal_token = internal_token;
        let site = web::Website::build(config)
            .await
            .expect("building the website");
        let addr = site.local_addr();
        let task = tokio::spawn(site.run(std::future::pending()));
        Self { addr, task }
    }

    /// A fresh visitor.
    pub fn visitor(&self) -> Browser {
        self.visitor_from([127, 0, 0, 1])
    }

    /// A fresh visitor connecting from this loopback address.
    pub fn visitor_from(&self, address: [u8; 4]) -> Browser {
        Browser {
            base: format!("http://{}", self.addr),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .local_address(std::net::IpAddr::from(address))
                .build()
                .unwrap(),
            cookie: None,
        }
    }
}

/// One response, read whole.
#[derive(Debug)]
pub struct Page {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: header::HeaderMap,
    /// Its body.
    pub body: String,
}

impl Page {
    /// Where a redirect points.
    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The page's CSRF token (every form carries the same one).
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf_token" value=""#;
        let start = self.body.find(marker).expect("a form on the page") + marker.len();
        self.body[start..].split('"').next().unwrap().to_owned()
    }

    /// Asserts a redirect to `to` (See Other).
    #[track_caller]
    pub fn assert_redirect(&self, to: &str) {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "{}", self.body);
        assert_eq!(self.location(), to);
    }
}

/// A visitor with a cookie jar of one cookie.
pub struct Browser {
    /// The site's base URL.
    pub base: String,
    client: reqwest::Client,
    /// The session cookie, `name=value`.
    pub cookie: Option<String>,
}

impl Browser {
    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(cookie) => request.header(header::COOKIE, cookie),
            None => request,
        };
        let response = request.send().await.expect("the website answers");
        for set in response.headers().get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// `POST path` with these form fields, exactly as given.
    pub async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    web::error::encode_component(k),
                    web::error::encode_component(v)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header(header::ORIGIN, &self.base)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    /// Opens `page`, then posts `fields` to `action` with its CSRF token.
    pub async fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(page).await.csrf();
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(action, &all).await
    }

    /// Uploads `image` as the profile picture, from the account page.
    pub async fn upload_picture(&mut self, image: Vec<u8>) -> Page {
        let csrf = self.get("/account").await.csrf();
        let boundary = "----blog-test-boundary";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{csrf}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"me.png\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&image);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let request = self
            .client
            .post(format!("{}/account/picture", self.base))
            .header(header::ORIGIN, &self.base)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        self.send(request).await
    }

    /// Registers (and so logs in) `name`, with the password `"{name} password"`.
    pub async fn register(&mut self, name: &str) {
        let password = format!("{name} password");
        let email = format!("{name}@example.com");
        let page = self
            .submit(
                "/register",
                "/register",
                &[
                    ("username", name),
                    ("email", &email),
                    ("password", &password),
                ],
            )
            .await;
        page.assert_redirect("/");
    }

    /// Publishes a post; returns its path.
    pub async fn publish(&mut self, title: &str, content: &str) -> String {
        let page = self
            .submit(
                "/posts/new",
                "/posts/new",
                &[("title", title), ("content", content)],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        page.location().to_owned()
    }
}
