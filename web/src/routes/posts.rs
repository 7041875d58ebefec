//! The home page, a post, a user's posts, and writing, editing and deleting
//! posts (the posts-service decides who may).

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    response::{Html, Redirect, Response},
};
use serde::Deserialize;

use proto::{
    auth::GetUserRequest,
    posts::{
        CreatePostRequest, DeletePostRequest, GetPostRequest, ListPostsRequest, Post,
        UpdatePostRequest,
    },
};

use super::{Field, FormView, Moment, Plain, form_page, internal, is_form_error};
use crate::{Shared, error::PageError, error::encode_component, visitor::Nav, visitor::Visitor};

/// Posts per page.
const PAGE_SIZE: i32 = 10;
/// Characters of a post's body shown in a listing.
const EXCERPT_CHARS: usize = 280;

/// A post as the templates show it.
pub struct PostView {
    id: i64,
    title: String,
    content: String,
    /// Where the listing's excerpt of `content` ends, if before the end.
    excerpt_end: Option<usize>,
    author: String,
    author_id: i64,
    avatar_url: String,
    time: Moment,
}

impl From<Post> for PostView {
    fn from(post: Post) -> Self {
        let author = post.author.unwrap_or_default();
        let excerpt_end = post
            .content
            .char_indices()
            .nth(EXCERPT_CHARS)
            .map(|(end, _)| end);
        Self {
            id: post.id,
            title: post.title,
            content: post.content,
            excerpt_end,
            author: author.username,
            author_id: author.id,
            avatar_url: author.avatar_url,
            time: Moment::of(post.create_time.as_ref()),
        }
    }
}

impl PostView {
    /// The first [`EXCERPT_CHARS`] characters of the post, with an
    /// ellipsis when there is more.
    fn excerpt(&self) -> impl std::fmt::Display + '_ {
        struct Excerpt<'a>(&'a str, bool);
        impl std::fmt::Display for Excerpt<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)?;
                if self.1 {
                    f.write_str("…")?;
                }
                Ok(())
            }
        }
        match self.excerpt_end {
            Some(end) => Excerpt(&self.content[..end], true),
            None => Excerpt(&self.content, false),
        }
    }
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    nav: Nav,
    posts: Vec<PostView>,
    next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "user_posts.html")]
struct UserPostsPage {
    nav: Nav,
    username: String,
    avatar_url: String,
    total: i64,
    posts: Vec<PostView>,
    next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "post.html")]
struct PostPage {
    nav: Nav,
    post: PostView,
    mine: bool,
}

/// `?page_token=`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Paging {
    page_token: String,
}

/// `GET /`: the newest posts.
pub async fn home(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Query(paging): Query<Paging>,
) -> Result<Response, PageError> {
    let (posts, next, _) = list(&app, &visitor, 0, paging.page_token).await?;
    let page = HomePage {
        nav: visitor.nav_for_reading(),
        posts,
        next_page: next.map(|t| format!("/?page_token={}", encode_component(&t))),
    };
    Ok(visitor.respond(&app, Html(page.render().map_err(internal)?)))
}

/// `GET /users/{id}/posts`: one user's posts, with their name and picture.
pub async fn by_user(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Path(id): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Response, PageError> {
    let id = parse_id(&id)?;
    let profile = app
        .users()
        .get_user(GetUserRequest { id })
        .await?
        .into_inner();
    let (posts, next, total) = list(&app, &visitor, id, paging.page_token).await?;
    let page = UserPostsPage {
        nav: visitor.nav_for_reading(),
        username: profile.username,
        avatar_url: profile.avatar_url,
        total,
        posts,
        next_page: next.map(|t| format!("/users/{id}/posts?page_token={}", encode_component(&t))),
    };
    Ok(visitor.respond(&app, Html(page.render().map_err(internal)?)))
}

async fn list(
    app: &Shared,
    visitor: &Visitor,
    author_id: i64,
    page_token: String,
) -> Result<(Vec<PostView>, Option<String>, i64), PageError> {
    // Reading is public, so the call goes without the visitor's token: it
    // would change nothing in the answer, only cost the posts-service a
    // check of it on every page.
    let response = app
        .posts()
        .list_posts(visitor.plain(ListPostsRequest {
            page_size: PAGE_SIZE,
            page_token,
            author_id,
        }))
        .await
        .map_err(|status| {
            // A mangled `?page_token=` is a bad address, not a form.
            if status.code() == tonic::Code::InvalidArgument {
                PageError::BadRequest
            } else {
                status.into()
            }
        })?
        .into_inner();
    let next = Some(response.next_page_token).filter(|t| !t.is_empty());
    Ok((
        response.posts.into_iter().map(PostView::from).collect(),
        next,
        response.total_size,
    ))
}

/// `GET /posts/{id}`.
pub async fn show(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let post = fetch(&app, &visitor, &id).await?;
    let mine = visitor
        .tokens()
        .is_some_and(|t| post.author.as_ref().is_some_and(|a| a.id == t.user_id));
    let page = PostPage {
        nav: visitor.nav_for_reading(),
        post: post.into(),
        mine,
    };
    Ok(visitor.respond(&app, Html(page.render().map_err(internal)?)))
}

/// The post `id` (a public read, like [`list`]'s, without the token).
async fn fetch(app: &Shared, visitor: &Visitor, id: &str) -> Result<Post, PageError> {
    let id = parse_id(id)?;
    Ok(app
        .posts()
        .get_post(visitor.plain(GetPostRequest { id }))
        .await?
        .into_inner())
}

/// A post form's fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PostForm {
    csrf_token: String,
    title: String,
    content: String,
}

fn post_form(
    title: &'static str,
    action: String,
    submit: &'static str,
    values: (&str, &str),
) -> FormView {
    let mut form = FormView::new(title, action, submit);
    form.fields = vec![
        Field::new("title", "Title", "text").value(values.0),
        Field::new("content", "Content", "textarea").value(values.1),
    ];
    form
}

/// `GET /posts/new`.
pub async fn new_form(State(app): State<Shared>, visitor: Visitor) -> Result<Response, PageError> {
    visitor.require_login()?;
    let form = post_form("New post", "/posts/new".into(), "Publish", ("", ""));
    form_page(&app, visitor, form, axum::http::StatusCode::OK)
}

/// `POST /posts/new`.
pub async fn create(
    State(app): State<Shared>,
    visitor: Visitor,
    Form(input): Form<PostForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    visitor.require_login()?;
    let created = app
        .posts()
        .create_post(visitor.call(CreatePostRequest {
            title: input.title.clone(),
            content: input.content.clone(),
        }))
        .await;
    let saved = created.map(|post| post.into_inner().id);
    let form = post_form(
        "New post",
        "/posts/new".into(),
        "Publish",
        (&input.title, &input.content),
    );
    after_save(&app, visitor, saved, form)
}

/// The answer to a post form: the post once saved; the form again, with
/// each problem beside its field, when the service refused it.
fn after_save(
    app: &Shared,
    visitor: Visitor,
    saved: Result<i64, tonic::Status>,
    form: FormView,
) -> Result<Response, PageError> {
    match saved {
        Ok(id) => Ok(visitor.respond(app, Redirect::to(&format!("/posts/{id}")))),
        Err(status) if is_form_error(&status) => form_page(
            app,
            visitor,
            form.refused(&status),
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        ),
        Err(status) => Err(status.into()),
    }
}

/// `GET /posts/{id}/edit` (the author only).
pub async fn edit_form(
    State(app): State<Shared>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let tokens = visitor.require_login()?;
    let post = fetch(&app, &visitor, &id).await?;
    if post.author.as_ref().map(|a| a.id) != Some(tokens.user_id) {
        return Err(tonic::Status::permission_denied("not the author").into());
    }
    let form = post_form(
        "Edit post",
        format!("/posts/{}/edit", post.id),
        "Save",
        (&post.title, &post.content),
    );
    form_page(&app, visitor, form, axum::http::StatusCode::OK)
}

/// `POST /posts/{id}/edit`.
pub async fn update(
    State(app): State<Shared>,
    visitor: Visitor,
    Path(id): Path<String>,
    Form(input): Form<PostForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    visitor.require_login()?;
    let id = parse_id(&id)?;
    let updated = app
        .posts()
        .update_post(visitor.call(UpdatePostRequest {
            id,
            title: Some(input.title.clone()),
            content: Some(input.content.clone()),
        }))
        .await;
    let form = post_form(
        "Edit post",
        format!("/posts/{id}/edit"),
        "Save",
        (&input.title, &input.content),
    );
    after_save(&app, visitor, updated.map(|_| id), form)
}

/// `POST /posts/{id}/delete`.
pub async fn delete(
    State(app): State<Shared>,
    visitor: Visitor,
    Path(id): Path<String>,
    Form(input): Form<Plain>,
) -> Result<Response, PageError> {
    input.check(&visitor)?;
    let tokens = visitor.require_login()?;
    let id = parse_id(&id)?;
    app.posts()
        .delete_post(visitor.call(DeletePostRequest { id }))
        .await?;
    let mine = format!("/users/{}/posts", tokens.user_id);
    Ok(visitor.respond(&app, Redirect::to(&mine)))
}

/// A positive id from the path.
pub fn parse_id(raw: &str) -> Result<i64, PageError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(PageError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(content: &str) -> PostView {
        PostView::from(Post {
            content: content.to_owned(),
            ..Post::default()
        })
    }

    #[test]
    fn a_listing_shows_the_first_characters_of_a_long_post() {
        let long = "é".repeat(EXCERPT_CHARS + 1);
        let excerpt = view(&long).excerpt().to_string();
        assert_eq!(excerpt.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(excerpt, format!("{}…", "é".repeat(EXCERPT_CHARS)));
        let exact = "é".repeat(EXCERPT_CHARS);
        assert_eq!(view(&exact).excerpt().to_string(), exact);
        assert_eq!(view("").excerpt().to_string(), "");
    }

    #[test]
    fn a_listing_escapes_what_it_shows() {
        let page = HomePage {
            nav: Nav {
                user: None,
                csrf: String::new(),
            },
            posts: vec![view("<script>alert(1)</script>")],
            next_page: None,
        };
        let html = page.render().expect("the page renders");
        assert!(html.contains("&#60;script&#62;alert(1)"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }
}
