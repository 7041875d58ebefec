//! Outgoing mail: over SMTP when `SMTP_URL` is set, otherwise written as
//! `.eml` files under `DATA_DIR/mail/` (and logged), so a local stack works
//! without a mail server and a developer can still open the message.

use std::path::PathBuf;

use anyhow::Context;
use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};

/// Something that delivers a message.
#[async_trait]
pub trait Mailer: Send + Sync {
    /// Delivers `message`.
    async fn send(&self, message: Message) -> anyhow::Result<()>;
}

/// Delivery over SMTP.
pub struct SmtpMailer(AsyncSmtpTransport<Tokio1Executor>);

impl SmtpMailer {
    /// A mailer for an `smtp://` or `smtps://` URL.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .context("SMTP_URL")?
            .build();
        Ok(Self(transport))
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, message: Message) -> anyhow::Result<()> {
        self.0.send(message).await.context("sending over SMTP")?;
        Ok(())
    }
}

/// Delivery into a directory, one `.eml` file per message.
pub struct FileMailer {
    /// Where messages are written.
    dir: PathBuf,
}

impl FileMailer {
    /// A mailer writing into `dir` (created when needed).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

#[async_trait]
impl Mailer for FileMailer {
    async fn send(&self, message: Message) -> anyhow::Result<()> {
        shared::db::create_private_dir(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let name = format!(
            "{}-{}.eml",
            shared::time::Timestamp::now().as_micros(),
            URL_SAFE_NO_PAD.encode(shared::secret::random_bytes::<6>())
        );
        let path = self.dir.join(&name);
        // Written under a hidden name, then renamed: whoever watches the
        // directory sees a message whole or not at all.
        let partial = self.dir.join(format!(".{name}.part"));
        // A message holds a live reset link: only this user may read it.
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options
            .open(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        let written = async {
            tokio::io::AsyncWriteExt::write_all(&mut file, &message.formatted()).await?;
            // A tokio file finishes its last write in the background unless
            // flushed: the rename must come after it.
            tokio::io::AsyncWriteExt::flush(&mut file).await?;
            drop(file);
            tokio::fs::rename(&partial, &path).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        tracing::info!(path = %path.display(), "mail written to a file (SMTP_URL is not set)");
        Ok(())
    }
}

/// The password-reset message, as plain text and HTML.
pub fn password_reset(
    from: &Mailbox,
    to: &str,
    username: &str,
    link: &str,
    valid_minutes: u64,
) -> anyhow::Result<Message> {
    let to: Mailbox = to.parse().context("recipient address")?;
    let text = format!(
        "Hello {username},\r\n\r\n\
         Someone asked to reset the password of your blog account. If it was you,\r\n\
         open this link within {valid_minutes} minutes to choose a new password:\r\n\r\n\
         {link}\r\n\r\n\
         If it was not you, ignore this message: your password stays as it is.\r\n"
    );
    let html = format!(
        "<!doctype html><html><body>\
         <p>Hello {name},</p>\
         <p>Someone asked to reset the password of your blog account. If it was you, \
         open this link within {valid_minutes} minutes to choose a new password:</p>\
         <p><a href=\"{href}\">Reset my password</a></p>\
         <p>If it was not you, ignore this message: your password stays as it is.</p>\
         </body></html>",
        name = html_escape(username),
        href = html_escape(link),
    );
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject("Reset your password")
        .multipart(MultiPart::alternative_plain_html(text, html))
        .context("building the reset message")
}

/// The notice to the old address after an email change.
pub fn email_changed(
    from: &Mailbox,
    to: &str,
    username: &str,
    new_email: &str,
) -> anyhow::Result<Message> {
    let to: Mailbox = to.parse().context("recipient address")?;
    let text = format!(
        "Hello {username},\r\n\r\n\
         The email address of your blog account was changed to {new_email}.\r\n\
         Password reset links sent to this address no longer work.\r\n\r\n\
         If you did not make this change, your password may be known to\r\n\
         someone else: log in and change it, and contact us.\r\n"
    );
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject("Your email address was changed")
        .body(text)
        .context("building the email change notice")
}

fn html_escape(raw: &str) -> String {
    raw.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
