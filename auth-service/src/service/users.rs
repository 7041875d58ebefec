//! `blog.auth.v1.UserService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use proto::auth::{
    CreateUserRequest, DeleteAvatarRequest, DeleteMeRequest, GetMeRequest, GetUserRequest,
    SetAvatarRequest, UpdateMeRequest, User, UserProfile, user_service_server::UserService,
};
use shared::{limits::Key, status::FieldErrors};

use crate::{
    AppState,
    domain::{Email, Password, Username},
    error::Error,
    store::{NewUser, UserRecord},
};

/// What a wrong password is told when it re-authenticates a change.
const INCORRECT: &str = "Password is incorrect";

/// Handlers of `UserService`.
pub struct UsersApi {
    /// Shared service state.
    state: Arc<AppState>,
}

impl UsersApi {
    /// Handlers over `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    fn user(&self, record: UserRecord) -> User {
        User {
            id: record.id,
            avatar_url: self.state.avatars.url(record.avatar_key.as_deref()),
            username: record.username,
            email: record.email,
            create_time: Some(record.create_time.into()),
        }
    }
}

#[tonic::async_trait]
impl UserService for UsersApi {
    #[tracing::instrument(skip_all)]
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let address = self.state.client_address(&request);
        let request = request.into_inner();
        let mut errors = FieldErrors::default();
        let username = errors.check("username", Username::parse(&request.username));
        let email = errors.check("email", Email::parse(&request.email));
        let password = errors.check("password", Password::parse(request.password));
        let (username, email, password) = errors
            .finish_with((username, email, password))
            .map_err(Error::from)?;

        // Cheap checks first, the hash last. A registration answers whether
        // an email is taken, so registrations are limited per address.
        if let Some(address) = address {
            self.state
                .rate_limit(
                    Key::new("registrations-from", &[address.to_string().as_bytes()]),
                    self.state.limits.registrations(),
                    "Too many registrations from this address",
                )
                .await?;
        }
        if let Some(taken) = self.state.store.taken(&username, &email).await? {
            return Err(taken.into());
        }
        let password_hash = self.state.passwords.hash(&password).await?;
        let created = self
            .state
            .store
            .create_user(NewUser {
                username: &username,
                email: &email,
                password_hash: &password_hash,
            })
            .await?;
        tracing::info!(user_id = created.id, "user created");
        Ok(Response::new(self.user(created)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        let id = request.into_inner().id;
        if id <= 0 {
            return Err(Error::UserNotFound.into());
        }
        let user = self
            .state
            .store
            .user_by_id(id)
            .await?
            .ok_or(Error::UserNotFound)?;
        Ok(Response::new(UserProfile {
            id: user.id,
            username: user.username,
            avatar_url: self.state.avatars.url(user.avatar_key.as_deref()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_me(&self, request: Request<GetMeRequest>) -> Result<Response<User>, Status> {
        let me = self.state.sessions.require_live(&request).await?;
        let user = self.state.my_account(&me).await?;
        Ok(Response::new(self.user(user)))
    }

    #[tracing::instrument(skip_all)]
    async fn update_me(&self, request: Request<UpdateMeRequest>) -> Result<Response<User>, Status> {
        let me = self.state.sessions.require_live(&request).await?;
        let address = self.state.client_address(&request);
        let request = request.into_inner();
        let mut errors = FieldErrors::default();
        let username = request
            .username
            .as_deref()
            .and_then(|raw| errors.check("username", Username::parse(raw)));
        let email = request
            .email
            .as_deref()
            .and_then(|raw| errors.check("email", Email::parse(raw)));
        let password = request
            .password
            .and_then(|raw| errors.check("password", Password::presented(raw)));
        errors.finish().map_err(Error::from)?;

        let user = self.state.my_account(&me).await?;
        let email = email.filter(|email| email.as_str() != user.email);
        if username.is_none() && email.is_none() {
            return Ok(Response::new(self.user(user)));
        }
        // Whoever controls the email can reset the password: changing it
        // takes the password, not just a token.
        if email.is_some() {
            let Some(password) = password else {
                return Err(Error::from(FieldErrors::single(
                    "password",
                    "Password is required to change the email",
                ))
                .into());
            };
            self.state
                .credentials
                .reauthenticate(&user, &password, address, "password", INCORRECT)
                .await?;
        }
        let updated = self
            .state
            .store
            .update_user(me.id, username.as_ref(), email.as_ref())
            .await?
            .ok_or(Error::InvalidToken)?;
        if updated.user.email != updated.previous_email {
            tracing::info!(user_id = me.id, "email changed");
            self.state.resets.email_changed(
                updated.previous_email,
                updated.user.username.clone(),
                updated.user.email.clone(),
            );
        }
        Ok(Response::new(self.user(updated.user)))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_me(&self, request: Request<DeleteMeRequest>) -> Result<Response<()>, Status> {
        let me = self.state.sessions.require_live(&request).await?;
        let address = self.state.client_address(&request);
        let password = Password::presented(request.into_inner().password)
            .map_err(|e| Error::from(FieldErrors::single("password", e)))?;
        let user = self.state.my_account(&me).await?;
        self.state
            .credentials
            .reauthenticate(&user, &password, address, "password", INCORRECT)
            .await?;
        let deleted = self.state.store.delete_user(me.id).await?;
        if let Some(key) = deleted.and_then(|user| user.avatar_key) {
            self.state.avatars.delete(&key).await;
        }
        tracing::info!(user_id = me.id, "user deleted");
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all)]
    async fn set_avatar(
        &self,
        request: Request<SetAvatarRequest>,
    ) -> Result<Response<User>, Status> {
        let me = self.state.sessions.require_live(&request).await?;
        let image = request.into_inner().image;
        let key = self
            .state
            .avatars
            .store(image)
            .await?
            .map_err(Error::from)?;
        // The new object exists; point the user at it, then drop the old one.
        // Should the update fail, the new object is what gets dropped.
        match self.state.store.set_avatar(me.id, Some(&key)).await {
            Ok(Some((user, previous))) => {
                if let Some(previous) = previous {
                    self.state.avatars.delete(&previous).await;
                }
                tracing::info!(user_id = me.id, "avatar set");
                Ok(Response::new(self.user(user)))
            }
            Ok(None) => {
                self.state.avatars.delete(&key).await;
                Err(Error::InvalidToken.into())
            }
            Err(e) => {
                self.state.avatars.delete(&key).await;
                Err(e.into())
            }
        }
    }

    #[tracing::instrument(skip_all)]
    async fn delete_avatar(
        &self,
        request: Request<DeleteAvatarRequest>,
    ) -> Result<Response<User>, Status> {
        let me = self.state.sessions.require_live(&request).await?;
        let (user, previous) = self
            .state
            .store
            .set_avatar(me.id, None)
            .await?
            .ok_or(Error::InvalidToken)?;
        let previous = previous.ok_or(Error::NoAvatar)?;
        self.state.avatars.delete(&previous).await;
        tracing::info!(user_id = me.id, "avatar deleted");
        Ok(Response::new(self.user(user)))
    }
}
