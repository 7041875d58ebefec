//! `blog.auth.v1.AuthService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use proto::auth::{
    ChangePasswordRequest, GetJwksRequest, Jwks, LoginRequest, LogoutRequest, RefreshTokenRequest,
    RequestPasswordResetRequest, ResetPasswordRequest, TokenResponse,
    auth_service_server::AuthService,
};
use shared::{limits::Key, status::FieldErrors};

use crate::{
    AppState,
    domain::{Email, LoginName, Password},
    error::Error,
    store::Sessions,
};

/// Handlers of `AuthService`.
pub struct AuthApi {
    /// Shared service state.
    state: Arc<AppState>,
}

impl AuthApi {
    /// Handlers over `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn required(errors: &mut FieldErrors, field: &str, value: &str) {
    if value.is_empty() {
        errors.add(field, "must not be empty");
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    #[tracing::instrument(skip_all)]
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<TokenResponse>, Status> {
        let address = self.state.client_address(&request);
        let request = request.into_inner();
        let mut errors = FieldErrors::default();
        let name = errors.check(
            "username_or_email",
            LoginName::parse(&request.username_or_email),
        );
        required(&mut errors, "password", &request.password);
        let password = errors.check("password", Password::presented(request.password));
        let (name, password) = errors.finish_with((name, password)).map_err(Error::from)?;

        let user = self
            .state
            .credentials
            .login(&name, &password, address)
            .await?;
        let tokens = self.state.sessions.start(user.id, &user.username).await?;
        tracing::info!(user_id = user.id, "logged in");
        Ok(Response::new(tokens))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh_token(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<TokenResponse>, Status> {
        let refresh_token = request.into_inner().refresh_token;
        let mut errors = FieldErrors::default();
        required(&mut errors, "refresh_token", &refresh_token);
        errors.finish().map_err(Error::from)?;
        Ok(Response::new(
            self.state.sessions.refresh(&refresh_token).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<()>, Status> {
        let me = self.state.sessions.require_live(&request).await?;
        let which = if request.get_ref().all_sessions {
            Sessions::All
        } else {
            Sessions::Only(&me.session_id)
        };
        let ended = self.state.sessions.end(me.id, which).await?;
        tracing::info!(user_id = me.id, sessions = ended.len(), "logged out");
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all)]
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<()>, Status> {
        let me = self.state.sessions.require_live(&request).await?;
        let address = self.state.client_address(&request);
        let request = request.into_inner();
        let mut errors = FieldErrors::default();
        let current = errors.check(
            "current_password",
            Password::presented(request.current_password),
        );
        let new = errors.check("new_password", Password::parse(request.new_password));
        let (current, new) = errors.finish_with((current, new)).map_err(Error::from)?;

        let user = self.state.my_account(&me).await?;
        self.state
            .credentials
            .reauthenticate(
                &user,
                &current,
                address,
                "current_password",
                "Current password is incorrect",
            )
            .await?;
        let hash = self.state.passwords.hash(&new).await?;
        let ended = self
            .state
            .store
            .set_password(me.id, &hash, Sessions::AllBut(&me.session_id))
            .await?;
        tracing::info!(
            user_id = me.id,
            sessions_ended = ended.len(),
            "password changed"
        );
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all)]
    async fn request_password_reset(
        &self,
        request: Request<RequestPasswordResetRequest>,
    ) -> Result<Response<()>, Status> {
        let address = self.state.client_address(&request);
        let email = Email::parse(&request.into_inner().email)
            .map_err(|e| Error::from(FieldErrors::single("email", e)))?;
        let limits = &self.state.limits;
        if let Some(address) = address {
            self.state
                .rate_limit(
                    Key::new("reset-requests-from", &[address.to_string().as_bytes()]),
                    limits.reset_requests(),
                    "Too many password reset requests from this address",
                )
                .await?;
        }
        // Counted for any address, registered or not, so the answer tells
        // nothing about accounts.
        self.state
            .rate_limit(
                Key::new("reset-mails-to", &[email.as_str().as_bytes()]),
                limits.reset_mails(),
                "Too many password reset requests for this email",
            )
            .await?;
        // Whether or not the address has an account, the answer is the same
        // and immediate; the work happens in the background.
        self.state.resets.request(email);
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all)]
    async fn reset_password(
        &self,
        request: Request<ResetPasswordRequest>,
    ) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        let mut errors = FieldErrors::default();
        required(&mut errors, "token", &request.token);
        if request.token.contains('\0') {
            errors.add("token", "must not contain NUL");
        }
        let new = errors.check("new_password", Password::parse(request.new_password));
        let new = errors.finish_with(new).map_err(Error::from)?;
        // Cheap checks first: only a live token is worth hashing for.
        if request.token.len() > 128 || !self.state.resets.is_live(&request.token).await? {
            return Err(Error::InvalidResetToken.into());
        }
        let hash = self.state.passwords.hash(&new).await?;
        let user_id = self.state.resets.reset(&request.token, &hash).await?;
        tracing::info!(user_id, "password reset");
        Ok(Response::new(()))
    }

    async fn get_jwks(&self, _request: Request<GetJwksRequest>) -> Result<Response<Jwks>, Status> {
        Ok(Response::new(Jwks {
            keys: self.state.tokens.keys().jwks(),
        }))
    }
}
