//! Password reset by mail. Asking never reveals whether an account exists:
//! the answer is the same and as fast either way, because the lookup, the
//! token and the mail all happen in the background. A token is 256 random
//! bits, stored as SHA-256, valid for a limited time and used once; a newer
//! request adds a link without voiding the older ones, and using one (or
//! changing the password or the email) voids them all, and ends every
//! session of the account. Mails per account are limited here (requests per
//! address and per email are limited where they arrive); past the limit a
//! request is answered the same and no mail goes out.

use std::{sync::Arc, time::Duration};

use lettre::message::Mailbox;
use tokio::sync::Semaphore;

use shared::{
    limits::{Key, Limiter, Rate},
    secret::{random_token, sha256},
    time::Clock,
};

use crate::{
    domain::Email,
    error::{Error, Result},
    mail::{self, Mailer},
    store::Store,
};

/// Issues and redeems password-reset tokens.
pub struct PasswordResets {
    /// Accounts and tokens.
    store: Arc<dyn Store>,
    /// Delivers the link.
    mailer: Arc<dyn Mailer>,
    /// Sender of the mail.
    from: Mailbox,
    /// Base of the link.
    frontend_url: String,
    /// How long a token works.
    ttl: Duration,
    /// Where mails per account are counted.
    limiter: Arc<dyn Limiter>,
    /// Mails per account.
    mails_per_account: Rate,
    /// Bounds the requests being worked on in the background, so a flood
    /// of requests cannot pile up tasks, database work and mail.
    in_flight: Arc<Semaphore>,
    /// Where the time comes from.
    clock: Clock,
}

/// Most reset requests worked on at once; beyond it they are dropped (the
/// caller still gets the same OK, as always).
const MAX_IN_FLIGHT: usize = 64;

impl PasswordResets {
    /// A reset flow mailing links to `{frontend_url}/reset-password`.
    pub fn new(
        store: Arc<dyn Store>,
        mailer: Arc<dyn Mailer>,
        from: Mailbox,
        frontend_url: &str,
        ttl: Duration,
        limiter: Arc<dyn Limiter>,
        mails_per_account: Rate,
    ) -> Self {
        Self {
            store,
            mailer,
            from,
            frontend_url: frontend_url.trim_end_matches('/').to_owned(),
            ttl,
            limiter,
            mails_per_account,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            clock: Clock::system(),
        }
    }

    /// The same flow, reading the time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Starts a reset for `email` in the background and returns at once.
    pub fn request(self: &Arc<Self>, email: Email) {
        self.in_background("password reset request", move |this| async move {
            this.send_link(&email).await
        });
    }

    /// Tells `previous_email` that the account's email is now `email`, in
    /// the background: whoever did not make the change learns of it.
    pub fn email_changed(
        self: &Arc<Self>,
        previous_email: String,
        username: String,
        email: String,
    ) {
        self.in_background("email change notice", move |this| async move {
            let message = mail::email_changed(&this.from, &previous_email, &username, &email)?;
            this.mailer.send(message).await
        });
    }

    /// Runs `work` in the background within the in-flight bound; past it the
    /// work is dropped with a warning.
    fn in_background<F, Fut>(self: &Arc<Self>, what: &'static str, work: F)
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::warn!(what, "too much mail work at once: one dropped");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = work(this).await {
                tracing::error!(error = ?e, what, "mail work failed");
            }
        });
    }

    async fn send_link(&self, email: &Email) -> anyhow::Result<()> {
        let Some(user) = self.store.user_by_email(email).await? else {
            tracing::info!("password reset asked for an unknown address");
            return Ok(());
        };
        let account = Key::new("reset-mails-to-account", &[&user.id.to_be_bytes()]);
        if let Ok(Err(_)) | Err(_) = self.limiter.take(account, self.mails_per_account).await {
            tracing::info!(
                user_id = user.id,
                "password reset mail not sent: limit reached"
            );
            return Ok(());
        }
        let token = random_token();
        let now = self.clock.now();
        let expire_time = now + self.ttl;
        self.store
            .add_reset_token(user.id, &sha256(&token), now, expire_time)
            .await?;
        let link = format!("{}/reset-password?token={token}", self.frontend_url);
        let message = mail::password_reset(
            &self.from,
            &user.email,
            &user.username,
            &link,
            self.ttl.as_secs() / 60,
        )?;
        self.mailer.send(message).await?;
        tracing::info!(user_id = user.id, "password reset mail sent");
        Ok(())
    }

    /// Whether `token` can still be used: the cheap check before hashing a
    /// new password for it.
    pub async fn is_live(&self, token: &str) -> Result<bool> {
        self.store
            .reset_token_is_live(&sha256(token), self.clock.now())
            .await
    }

    /// Redeems `token` with the hash of the new password.
    pub async fn reset(&self, token: &str, new_hash: &str) -> Result<i64> {
        self.store
            .reset_password(&sha256(token), self.clock.now(), new_hash)
            .await?
            .ok_or(Error::InvalidResetToken)
    }
}
