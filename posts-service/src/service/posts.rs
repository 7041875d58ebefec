//! `blog.posts.v1.PostService`.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use proto::posts::{
    Author, CreatePostRequest, DeletePostRequest, GetPostRequest, ListPostsRequest,
    ListPostsResponse, Post, UpdatePostRequest, post_service_server::PostService,
};
use shared::{
    CurrentUser,
    limits::{Key, Limiter, Rate},
    status::FieldErrors,
};

use crate::{
    domain::{self, Content, PageToken, Title},
    error::Error,
    store::{Listing, PostRecord, Store},
};

/// Handlers of `PostService`.
pub struct PostsApi {
    /// Where posts live.
    store: Arc<dyn Store>,
    /// Where each user's writes are counted.
    limiter: Arc<dyn Limiter>,
    /// How many writes a user may make.
    writes: Rate,
}

impl PostsApi {
    /// Handlers over `store`, each user's writes limited to `writes`.
    pub fn new(store: Arc<dyn Store>, limiter: Arc<dyn Limiter>, writes: Rate) -> Self {
        Self {
            store,
            limiter,
            writes,
        }
    }

    /// Counts one write by `me`, or refuses it. While the limiter's store
    /// is out of reach writes are let through (and logged): the limit bounds
    /// volume, and posting should outlive a Redis outage.
    async fn write_allowed(&self, me: &CurrentUser) -> Result<(), Error> {
        let key = Key::new("post-writes", &[&me.id.to_be_bytes()]);
        match self.limiter.take(key, self.writes).await {
            Ok(decision) => decision.map_err(Error::WriteRateLimited),
            Err(e) => {
                tracing::warn!(error = %e, "limiter unavailable: write let through");
                Ok(())
            }
        }
    }
}

fn post(record: PostRecord) -> Post {
    Post {
        id: record.id,
        title: record.title,
        content: record.content,
        author: Some(Author {
            id: record.author_id,
            username: record.author_username,
            avatar_url: record.author_avatar_url,
        }),
        create_time: Some(record.create_time.into()),
        update_time: Some(record.update_time.into()),
    }
}

/// Ids are positive; anything else names no post.
fn post_id(id: i64) -> Result<i64, Error> {
    if id > 0 {
        Ok(id)
    } else {
        Err(Error::PostNotFound)
    }
}

#[tonic::async_trait]
impl PostService for PostsApi {
    #[tracing::instrument(skip_all)]
    async fn create_post(
        &self,
        request: Request<CreatePostRequest>,
    ) -> Result<Response<Post>, Status> {
        let me = CurrentUser::require(&request)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::default();
        let title = errors.check("title", Title::parse(request.title));
        let content = errors.check("content", Content::parse(request.content));
        let (title, content) = errors.finish_with((title, content)).map_err(Error::from)?;
        self.write_allowed(&me).await?;
        let created = self.store.create_post(&me, &title, &content).await?;
        tracing::info!(post_id = created.id, author_id = me.id, "post created");
        Ok(Response::new(post(created)))
    }

    #[tracing::instrument(skip_all, fields(post_id = request.get_ref().id))]
    async fn get_post(&self, request: Request<GetPostRequest>) -> Result<Response<Post>, Status> {
        let id = post_id(request.into_inner().id)?;
        let found = self.store.post(id).await?.ok_or(Error::PostNotFound)?;
        Ok(Response::new(post(found)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_posts(
        &self,
        request: Request<ListPostsRequest>,
    ) -> Result<Response<ListPostsResponse>, Status> {
        let request = request.into_inner();
        let mut errors = FieldErrors::default();
        let page_size = errors.check("page_size", domain::page_size(request.page_size));
        if request.author_id < 0 {
            errors.add("author_id", "must not be negative");
        }
        let token = if request.page_token.is_empty() {
            None
        } else {
            errors.check(
                "page_token",
                PageToken::decode(&request.page_token, request.author_id),
            )
        };
        let page_size = errors.finish_with(page_size).map_err(Error::from)?;

        // On the wire 0 means everyone; below here, `None` does.
        let author_id = request.author_id;
        let author = (author_id != 0).then_some(author_id);
        // One extra row tells whether another page follows.
        let page = self
            .store
            .list_posts(Listing {
                author,
                after: token.map(|t| (t.create_time, t.id)),
                limit: page_size + 1,
            })
            .await?;
        // A post names its author (the replica deletes an author's posts with
        // them), so only an empty page needs to ask whether the author exists.
        if let Some(author) = author
            && page.posts.is_empty()
            && !self.store.author_exists(author).await?
        {
            return Err(Error::UserNotFound.into());
        }
        // The page ends at `page_size` posts or before it would outgrow
        // MAX_PAGE_BYTES, whichever comes first (always at least one post);
        // the token leads on from its last post either way.
        let more = page.posts.len() as i64 > page_size;
        let mut posts = Vec::new();
        let mut bytes = 0;
        let mut cut = false;
        // `(create_time, id)` of the last post taken: where the next page starts.
        let mut last = None;
        for record in page.posts.into_iter().take(page_size as usize) {
            let position = (record.create_time, record.id);
            let post = post(record);
            let size = post.encoded_len() + 8;
            if !posts.is_empty() && bytes + size > domain::MAX_PAGE_BYTES {
                cut = true;
                break;
            }
            bytes += size;
            posts.push(post);
            last = Some(position);
        }
        let next_page_token = match last {
            Some((create_time, id)) if more || cut => PageToken {
                create_time,
                id,
                author_id,
            }
            .encode(),
            _ => String::new(),
        };
        Ok(Response::new(ListPostsResponse {
            posts,
            next_page_token,
            total_size: page.total_size,
        }))
    }

    #[tracing::instrument(skip_all, fields(post_id = request.get_ref().id))]
    async fn update_post(
        &self,
        request: Request<UpdatePostRequest>,
    ) -> Result<Response<Post>, Status> {
        let me = CurrentUser::require(&request)?;
        let request = request.into_inner();
        let id = post_id(request.id)?;
        let mut errors = FieldErrors::default();
        let title = request
            .title
            .and_then(|raw| errors.check("title", Title::parse(raw)));
        let content = request
            .content
            .and_then(|raw| errors.check("content", Content::parse(raw)));
        errors.finish().map_err(Error::from)?;
        self.write_allowed(&me).await?;

        let updated = if title.is_none() && content.is_none() {
            // Nothing to change: still answer as an update would.
            let found = self.store.post(id).await?.ok_or(Error::PostNotFound)?;
            if found.author_id != me.id {
                return Err(Error::NotAuthor("update").into());
            }
            found
        } else {
            self.store
                .update_post(id, me.id, title.as_ref(), content.as_ref())
                .await?
        };
        Ok(Response::new(post(updated)))
    }

    #[tracing::instrument(skip_all, fields(post_id = request.get_ref().id))]
    async fn delete_post(
        &self,
        request: Request<DeletePostRequest>,
    ) -> Result<Response<()>, Status> {
        let me = CurrentUser::require(&request)?;
        let id = post_id(request.into_inner().id)?;
        self.write_allowed(&me).await?;
        self.store.delete_post(id, me.id).await?;
        tracing::info!(post_id = id, "post deleted");
        Ok(Response::new(()))
    }
}
