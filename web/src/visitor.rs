//! Who is asking: the session from the cookie (a fresh one for a first
//! visit, stored only if the page has a form), with an access token about
//! to expire exchanged for a new pair before the handler runs. A handler
//! hands its response back through [`Visitor::respond`], which stores the
//! session if it changed.

use std::convert::Infallible;

use axum::{
    extract::{ConnectInfo, FromRequestParts, connect_info::Connected},
    http::{HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
    serve::IncomingStream,
};
use tokio::net::TcpListener;
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
};

use proto::auth::{GetMeRequest, RefreshTokenRequest, TokenResponse};

use crate::{
    Shared,
    error::PageError,
    session::{Session, Tokens, unix_now},
};

/// Refresh an access token this long before it expires, so it does not
/// expire on the way to the service.
const REFRESH_MARGIN_SECS: u64 = 10;

/// Header and logout form of every page.
#[derive(Debug, Clone)]
pub struct Nav {
    /// The logged-in user's name and id.
    pub user: Option<(String, i64)>,
    /// The CSRF token for the logout form.
    pub csrf: String,
}

/// The visitor's address as `x-forwarded-for` metadata, formatted once per
/// connection rather than for every call made on its behalf.
#[derive(Debug, Clone)]
pub struct Peer(Option<MetadataValue<Ascii>>);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self(stream.remote_addr().ip().to_string().parse().ok())
    }
}

/// The visitor of one request.
#[derive(Debug)]
pub struct Visitor {
    /// Their session.
    pub session: Session,
    /// Whether the cookie must be written back.
    changed: bool,
    /// Whether the session was started by this request (no cookie came).
    fresh: bool,
    /// `(x-internal-token, x-forwarded-for)` to name the visitor's address
    /// to the auth-service, when the website has the internal token.
    forward: Option<(MetadataValue<Ascii>, MetadataValue<Ascii>)>,
}

impl FromRequestParts<Shared> for Visitor {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Self, Infallible> {
        let address = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .and_then(|ConnectInfo(Peer(address))| address.clone());
        let forward = app.internal_token.clone().zip(address);
        // A first visit's session has no CSRF secret until a page needs
        // one (`nav`) or the session is stored (`respond`); an empty secret
        // matches no form.
        let (session, changed) = match app.sealer.from_headers(&parts.headers) {
            Some(session) => (session, false),
            None => (Session::blank(), true),
        };
        let mut visitor = Self {
            session,
            changed,
            fresh: changed,
            forward,
        };
        visitor.refresh_if_due(app).await;
        Ok(visitor)
    }
}

impl Visitor {
    async fn refresh_if_due(&mut self, app: &Shared) {
        let Some(tokens) = &self.session.tokens else {
            return;
        };
        if tokens.access_expires > unix_now() + REFRESH_MARGIN_SECS {
            return;
        }
        let request = self.plain(RefreshTokenRequest {
            refresh_token: tokens.refresh.clone(),
        });
        match app.auth().refresh_token(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let tokens = self.session.tokens.as_mut().expect("checked above");
                tokens.access_expires = expiry(&response);
                tokens.access = response.access_token;
                tokens.refresh = response.refresh_token;
                self.changed = true;
            }
            // The service is away: keep the tokens and let the call fail
            // (a 503 page), rather than logging the visitor out.
            Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => {}
            Err(_) => self.log_out(),
        }
    }

    /// The logged-in user, if any.
    pub fn tokens(&self) -> Option<&Tokens> {
        self.session.tokens.as_ref()
    }

    /// The user, or the login page (and back here after).
    pub fn require_login(&self) -> Result<&Tokens, PageError> {
        self.tokens()
            .ok_or(PageError::Status(tonic::Status::unauthenticated("")))
    }

    /// What every page's header needs, its forms' CSRF token included.
    pub fn nav(&mut self) -> Nav {
        self.start();
        self.header()
    }

    /// What the header of a page without forms of its own needs. A first
    /// visit to such a page starts no session: someone who only reads is
    /// never given a cookie, nor is a CSRF secret drawn or a session sealed
    /// for them. (Their header has no form: the logout form is for those
    /// logged in, who come with a session.)
    pub fn nav_for_reading(&mut self) -> Nav {
        if self.fresh {
            self.changed = false;
        }
        self.header()
    }

    fn header(&self) -> Nav {
        Nav {
            user: self.tokens().map(|t| (t.username.clone(), t.user_id)),
            csrf: self.session.csrf.clone(),
        }
    }

    /// Draws the CSRF secret of a session begun by this request.
    fn start(&mut self) {
        if self.session.csrf.is_empty() {
            self.session.csrf = crate::session::random_token();
        }
    }

    /// The form's CSRF token is this session's, or the request is refused.
    pub fn check_csrf(&self, presented: &str) -> Result<(), PageError> {
        if self.session.csrf_matches(presented) {
            Ok(())
        } else {
            Err(PageError::Csrf)
        }
    }

    /// `message` as a call on the visitor's behalf, without their token.
    pub fn plain<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some((token, address)) = &self.forward {
            let metadata = request.metadata_mut();
            metadata.insert("x-internal-token", token.clone());
            metadata.insert("x-forwarded-for", address.clone());
        }
        request
    }

    /// `message` as a call with the visitor's access token, if any.
    pub fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.plain(message);
        if let Some(tokens) = self.tokens()
            && let Ok(value) = format!("Bearer {}", tokens.access).parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// Logs in with a fresh token pair, learning who it is for. A new CSRF
    /// secret comes with the new session (no fixation across login).
    pub async fn log_in(&mut self, app: &Shared, response: TokenResponse) -> Result<(), PageError> {
        let mut me = self.plain(GetMeRequest {});
        me.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", response.access_token)
                .parse()
                .map_err(|_| PageError::Status(tonic::Status::internal("bad token")))?,
        );
        let user = app.users().get_me(me).await?.into_inner();
        self.session = Session {
            csrf: crate::session::random_token(),
            tokens: Some(Tokens {
                access_expires: expiry(&response),
                access: response.access_token,
                refresh: response.refresh_token,
                user_id: user.id,
                username: user.username,
            }),
        };
        self.changed = true;
        Ok(())
    }

    /// Forgets the tokens (the CSRF secret stays).
    pub fn log_out(&mut self) {
        self.session.tokens = None;
        self.changed = true;
    }

    /// Keeps a new username in the header.
    pub fn renamed(&mut self, username: String) {
        if let Some(tokens) = self.session.tokens.as_mut() {
            tokens.username = username;
            self.changed = true;
        }
    }

    /// `response`, storing the session first if it changed.
    pub fn respond(mut self, app: &Shared, response: impl IntoResponse) -> Response {
        let mut response = response.into_response();
        if self.changed {
            // Never store a session without its CSRF secret.
            self.start();
            if let Ok(cookie) = HeaderValue::from_str(&app.sealer.set_cookie(&self.session)) {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
        }
        response
    }
}

/// When an access token from `response` expires, seconds since the epoch.
fn expiry(response: &TokenResponse) -> u64 {
    unix_now() + u64::try_from(response.expires_in).unwrap_or(0)
}
