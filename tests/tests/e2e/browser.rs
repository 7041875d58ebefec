//! The website in a real browser: headless Chromium driven over WebDriver
//! (ChromeDriver), clicking and typing as a person does. Skipped when no
//! ChromeDriver is installed; CI installs one and requires these. Every step
//! leaves a screenshot under `target/screenshots/` for review.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use crate::{helpers::spawn_stack, site::Site};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// ChromeDriver, and the browser session it drives.
struct Driver {
    process: Child,
    http: reqwest::Client,
    session: String,
    base: String,
    shots: PathBuf,
    name: &'static str,
    step: u32,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The session is ended first, which closes the browser: killed
        // alone, ChromeDriver would leave its Chromium running.
        self.end_session();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `TEST_CHROMEDRIVER`, else a ChromeDriver where Debian puts it.
fn chromedriver() -> Option<PathBuf> {
    std::env::var_os("TEST_CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromedriver")))
        .filter(|p| p.exists())
}

impl Driver {
    /// A headless browser, or `None` (the case skipped) without one.
    async fn start(name: &'static str) -> Option<Self> {
        let Some(path) = chromedriver() else {
            testkit::skipped("TEST_CHROMEDRIVER", name);
            return None;
        };
        let port = free_port();
        let process = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,900", "--lang=en-US"],
        });
        if let Some(binary) = std::env::var_os("TEST_CHROMIUM")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/usr/bin/chromium")))
            .filter(|p| p.exists())
        {
            options["binary"] = json!(binary);
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
        }}});
        let created = http
            .post(format!("{base}/session"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(capabilities.to_string())
            .send()
            .await
            .expect("chromedriver answers")
            .text()
            .await
            .unwrap();
        let created: Value = serde_json::from_str(&created).unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("..")
            .join("screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let driver = Self {
            process,
            http,
            session,
            base,
            shots,
            name,
            step: 0,
        };
        // A page still loading gets a moment to show what is looked for.
        driver
            .command(
                reqwest::Method::POST,
                "/timeouts",
                Some(json!({"implicit": 15000})),
            )
            .await;
        Some(driver)
    }

    /// Ends the browser session, waiting (a bounded time) for ChromeDriver
    /// to close the browser. Plain blocking HTTP: it runs from `drop`.
    fn end_session(&self) {
        use std::io::{Read, Write};
        let Some(address) = self.base.strip_prefix("http://") else {
            return;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(address) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let answer = self.try_command(method, path, body).await;
        if answer.get("error").is_some() {
            panic!("WebDriver {path}: {answer}");
        }
        answer
    }

    /// A command's `value`, which holds `error` when it failed.
    async fn try_command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let answer = request.send().await.unwrap().text().await.unwrap();
        let answer: Value = serde_json::from_str(&answer).unwrap();
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Chooses the file at `path` in a file input.
    async fn attach(&self, css: &str, path: &str) {
        let element = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": path})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.command(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits (up to fifteen seconds) until the page shows `text`; returns
    /// the page's source.
    async fn wait_for(&self, text: &str) -> String {
        let mut source = String::new();
        for _ in 0..300 {
            source = self.source().await;
            if source.contains(text) {
                return source;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the page never showed {text:?}: {source}");
    }

    /// Waits (up to fifteen seconds) until the browser is at `path`.
    async fn wait_at(&self, path: &str) {
        for _ in 0..300 {
            if self.path().await == path {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the browser never reached {path}, it is at {}",
            self.path().await
        );
    }

    async fn path(&self) -> String {
        let url = self.command(reqwest::Method::GET, "/url", None).await;
        let url = url.as_str().unwrap();
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        after_scheme
            .find('/')
            .map_or("/".to_owned(), |i| after_scheme[i..].to_owned())
    }

    /// Saves what the browser shows as `{test}-{n}-{label}.png`.
    async fn screenshot(&mut self, label: &str) {
        self.step += 1;
        let png = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let bytes = STANDARD.decode(png.as_str().unwrap()).unwrap();
        let file = self
            .shots
            .join(format!("{}-{:02}-{label}.png", self.name, self.step));
        std::fs::write(file, bytes).unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn png(side: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 160])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn a_person_uses_the_whole_blog_in_chromium() {
    let Some(mut browser) = Driver::start("journey").await else {
        return;
    };
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let base = format!("http://{}", site.addr);

    // Register.
    browser.go(&format!("{base}/")).await;
    browser.click("a[href='/register']").await;
    browser.wait_at("/register").await;
    browser.type_into("#username", "alice").await;
    browser.type_into("#email", "alice@example.com").await;
    browser
        .type_into("#password", "alice's long password")
        .await;
    browser.screenshot("register").await;
    browser.click("main button[type=submit]").await;
    browser.wait_at("/").await;
    browser.wait_for("Log out").await;

    // Write a post.
    browser.click("a[href='/posts/new']").await;
    browser.type_into("#title", "Hello from Chromium").await;
    browser
        .type_into("#content", "Typed by a real browser.\nSecond line.")
        .await;
    browser.screenshot("new-post").await;
    browser.click("main button[type=submit]").await;
    browser.wait_for("Typed by a real browser.").await;
    let post = browser.path().await;
    assert!(post.starts_with("/posts/"), "{post}");
    browser.wait_for("Typed by a real browser.").await;
    browser.screenshot("post").await;

    // Edit it.
    browser.click(&format!("a[href='{post}/edit']")).await;
    browser
        .type_into("#title", "Hello again from Chromium")
        .await;
    browser.click("main button[type=submit]").await;
    browser.wait_at(&post).await;
    browser.wait_for("Hello again from Chromium").await;

    // A refused form shows its problem beside the field.
    browser.click(&format!("a[href='{post}/edit']")).await;
    browser.type_into("#title", " ").await;
    browser.click("main button[type=submit]").await;
    browser.wait_for("title-error").await;
    browser.screenshot("edit-refused").await;

    // Upload a profile picture.
    let picture = std::env::temp_dir().join(format!("blog-avatar-{}.png", testkit::unique_id()));
    std::fs::write(&picture, png(64)).unwrap();
    browser.click("a[href='/account']").await;
    browser.attach("#image", picture.to_str().unwrap()).await;
    browser
        .click("form[action='/account/picture'] button")
        .await;
    browser.wait_for("Picture saved.").await;
    browser.screenshot("account").await;
    let _ = std::fs::remove_file(&picture);
    browser.go(&format!("{base}/")).await;
    browser.wait_for("class=\"avatar small\"").await;
    browser.screenshot("home").await;

    // Log out, and back in.
    browser.click("form[action='/logout'] button").await;
    browser.wait_for("href=\"/login\"").await;
    browser.click("a[href='/login']").await;
    browser.type_into("#username_or_email", "alice").await;
    browser
        .type_into("#password", "alice's long password")
        .await;
    browser.click("main button[type=submit]").await;
    browser.wait_for("Log out").await;
    browser.screenshot("logged-in-again").await;
}
