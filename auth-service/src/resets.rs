//! Password reset by mail. Asking never reveals whether an account exists:
//! the answer is the same and as fast either way, because the lookup, the
//! token and the mail all happen in the background. A token is 256 random
//! bits, stored as SHA-256, valid for a limited time, replaced by a newer
//! request, and used once; using it ends every session of the account.

use std::{sync::Arc, time::Duration};

use lettre::message::Mailbox;
use tokio::sync::Semaphore;

use shared::secret::{random_token, sha256};

use crate::{
    domain::Email,
    error::{Error, Result},
    mail::{self, Mailer},
    store::{Store, now_micros},
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
    /// Bounds the requests being worked on in the background, so a flood
    /// of requests cannot pile up tasks, database work and mail.
    in_flight: Arc<Semaphore>,
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
    ) -> Self {
        Self {
            store,
            mailer,
            from,
            frontend_url: frontend_url.trim_end_matches('/').to_owned(),
            ttl,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Starts a reset for `email` in the background and returns at once.
    pub fn request(self: &Arc<Self>, email: Email) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::warn!("too many password reset requests at once: one dropped");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = this.send_link(&email).await {
                tracing::error!(error = ?e, "password reset request failed");
            }
        });
    }

    async fn send_link(&self, email: &Email) -> anyhow::Result<()> {
        let Some(user) = self.store.user_by_login(email.as_str()).await? else {
            tracing::info!("password reset asked for an unknown address");
            return Ok(());
        };
        // `user_by_login` also matches usernames; a reset goes by email only.
        if user.email != email.as_str() {
            return Ok(());
        }
        let token = random_token();
        let expire_time = now_micros() + self.ttl.as_micros() as i64;
        self.store
            .replace_reset_token(user.id, &sha256(&token), expire_time)
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

    /// Redeems `token` with the hash of the new password.
    pub async fn reset(&self, token: &str, new_hash: &str) -> Result<i64> {
        self.store
            .reset_password(&sha256(token), now_micros(), new_hash)
            .await?
            .ok_or(Error::InvalidResetToken)
    }
}
