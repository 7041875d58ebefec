//! `PostService`: the tutorial's acceptance tests, over gRPC.

use std::collections::HashSet;

use proto::posts::{
    CreatePostRequest, DeletePostRequest, GetPostRequest, ListPostsRequest, ListPostsResponse,
    UpdatePostRequest,
};
use tonic::{Code, Request, Status};

use crate::helpers::{Stack, assert_status, bearer, spawn_stack, violated_fields};

async fn list(
    stack: &Stack,
    page_size: i32,
    page_token: &str,
    author_id: i64,
) -> Result<ListPostsResponse, Status> {
    stack
        .posts
        .clone()
        .list_posts(ListPostsRequest {
            page_size,
            page_token: page_token.into(),
            author_id,
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(stack: &Stack, id: i64) -> Result<proto::posts::Post, Status> {
    stack
        .posts
        .clone()
        .get_post(GetPostRequest { id })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn an_empty_blog_lists_no_posts() {
    let stack = spawn_stack().await;
    let page = list(&stack, 0, "", 0).await.unwrap();
    assert!(page.posts.is_empty());
    assert_eq!(page.next_page_token, "");
    assert_eq!(page.total_size, 0);
}

#[tokio::test]
async fn an_unknown_post_is_not_found() {
    let stack = spawn_stack().await;
    for id in [999, 0, -5] {
        assert_status(get(&stack, id).await, Code::NotFound, "Post not found");
    }
}

#[tokio::test]
async fn create_post_returns_the_author_from_the_token() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let post = stack
        .create_post(&alice, "My first post", "Hello, world")
        .await
        .unwrap();
    assert!(post.id > 0);
    assert_eq!(
        (post.title.as_str(), post.content.as_str()),
        ("My first post", "Hello, world")
    );
    let author = post.author.clone().unwrap();
    assert_eq!(
        (author.id, author.username.as_str()),
        (alice.id, alice.username.as_str())
    );
    assert!(post.create_time.is_some() && post.create_time == post.update_time);
    assert_eq!(get(&stack, post.id).await.unwrap(), post);
}

#[tokio::test]
async fn create_post_without_a_token_is_not_authenticated() {
    let stack = spawn_stack().await;
    let result = stack
        .posts
        .clone()
        .create_post(Request::new(CreatePostRequest {
            title: "t".into(),
            content: "c".into(),
        }))
        .await;
    assert_status(result, Code::Unauthenticated, "Not authenticated");
    assert_eq!(list(&stack, 0, "", 0).await.unwrap().total_size, 0);
}

#[tokio::test]
async fn a_bad_token_is_refused_even_when_reading() {
    let stack = spawn_stack().await;
    let result = stack
        .posts
        .clone()
        .list_posts(bearer("garbage", ListPostsRequest::default()))
        .await;
    assert_status(result, Code::Unauthenticated, "Invalid or expired token");
}

#[tokio::test]
async fn invalid_posts_are_refused_field_by_field() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    for (title, content, fields) in [
        ("", "body", vec!["title"]),
        ("   ", "body", vec!["title"]),
        (&"t".repeat(101) as &str, "body", vec!["title"]),
        ("title", "", vec!["content"]),
        ("title", &"c".repeat(20_001), vec!["content"]),
        ("", " \n ", vec!["title", "content"]),
    ] {
        let status = stack.create_post(&alice, title, content).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), fields);
    }
    // At the limits, and stored exactly as given.
    let post = stack
        .create_post(
            &alice,
            &format!(" {} ", "é".repeat(98)),
            &"ü".repeat(20_000),
        )
        .await
        .unwrap();
    assert_eq!(post.title, format!(" {} ", "é".repeat(98)));
    assert_eq!(list(&stack, 0, "", 0).await.unwrap().total_size, 1);
}

#[tokio::test]
async fn update_of_the_title_only_keeps_the_content() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let post = stack
        .create_post(&alice, "Original", "Body stays")
        .await
        .unwrap();
    let updated = stack
        .posts
        .clone()
        .update_post(bearer(
            &alice.token,
            UpdatePostRequest {
                id: post.id,
                title: Some("Renamed".into()),
                content: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.title.as_str(), updated.content.as_str()),
        ("Renamed", "Body stays")
    );
    assert_eq!(updated.create_time, post.create_time);
    assert!(updated.update_time.unwrap().seconds >= post.update_time.unwrap().seconds);
    assert_eq!(get(&stack, post.id).await.unwrap(), updated);
}

#[tokio::test]
async fn update_by_another_user_is_permission_denied_and_changes_nothing() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let mallory = stack.user().await;
    let post = stack.create_post(&alice, "Alice's", "Mine").await.unwrap();
    for (title, content) in [
        (Some("Hacked".to_string()), None),
        (None, Some("pwned".to_string())),
        (None, None),
    ] {
        let result = stack
            .posts
            .clone()
            .update_post(bearer(
                &mallory.token,
                UpdatePostRequest {
                    id: post.id,
                    title,
                    content,
                },
            ))
            .await;
        assert_status(
            result,
            Code::PermissionDenied,
            "Not authorized to update this post",
        );
    }
    assert_eq!(get(&stack, post.id).await.unwrap(), post);
}

#[tokio::test]
async fn update_of_a_missing_post_is_not_found_before_anything_else() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let result = stack
        .posts
        .clone()
        .update_post(bearer(
            &alice.token,
            UpdatePostRequest {
                id: 4242,
                title: Some("x".into()),
                content: None,
            },
        ))
        .await;
    assert_status(result, Code::NotFound, "Post not found");
    let result = stack
        .posts
        .clone()
        .update_post(Request::new(UpdatePostRequest {
            id: 4242,
            title: Some("x".into()),
            content: None,
        }))
        .await;
    assert_status(result, Code::Unauthenticated, "Not authenticated");
}

#[tokio::test]
async fn delete_by_another_user_is_permission_denied() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let mallory = stack.user().await;
    let post = stack
        .create_post(&alice, "Keep me", "Please")
        .await
        .unwrap();
    let result = stack
        .posts
        .clone()
        .delete_post(bearer(&mallory.token, DeletePostRequest { id: post.id }))
        .await;
    assert_status(
        result,
        Code::PermissionDenied,
        "Not authorized to delete this post",
    );
    assert_eq!(get(&stack, post.id).await.unwrap(), post);
}

#[tokio::test]
async fn deleting_your_own_post_makes_it_not_found() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let post = stack
        .create_post(&alice, "Short-lived", "Bye")
        .await
        .unwrap();
    stack
        .posts
        .clone()
        .delete_post(bearer(&alice.token, DeletePostRequest { id: post.id }))
        .await
        .unwrap();
    assert_status(get(&stack, post.id).await, Code::NotFound, "Post not found");
    let again = stack
        .posts
        .clone()
        .delete_post(bearer(&alice.token, DeletePostRequest { id: post.id }))
        .await;
    assert_status(again, Code::NotFound, "Post not found");
}

#[tokio::test]
async fn five_posts_page_by_two_newest_first_with_nothing_twice_or_missing() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            stack
                .create_post(&alice, &format!("Post {i}"), "body")
                .await
                .unwrap()
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(&stack, 2, &token, 0).await.unwrap();
        assert_eq!(page.total_size, 5);
        assert!(page.posts.len() <= 2);
        seen.extend(page.posts.iter().map(|p| p.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);
}

#[tokio::test]
async fn listing_by_author_shows_only_their_posts() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let bob = stack.user().await;
    stack.create_post(&alice, "A1", "x").await.unwrap();
    stack.create_post(&bob, "B1", "x").await.unwrap();
    stack.create_post(&alice, "A2", "x").await.unwrap();
    let page = list(&stack, 1, "", alice.id).await.unwrap();
    assert_eq!(page.total_size, 2);
    assert_eq!(page.posts[0].title, "A2");
    let next = list(&stack, 1, &page.next_page_token, alice.id)
        .await
        .unwrap();
    assert_eq!(next.posts[0].title, "A1");
    assert_eq!(next.next_page_token, "");
    // A token is bound to its listing.
    let status = list(&stack, 1, &page.next_page_token, bob.id)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
}

#[tokio::test]
async fn listing_an_unknown_author_is_not_found() {
    let stack = spawn_stack().await;
    assert_status(
        list(&stack, 0, "", 987_654).await,
        Code::NotFound,
        "User not found",
    );
}

#[tokio::test]
async fn bad_list_parameters_are_invalid_argument() {
    let stack = spawn_stack().await;
    for (size, token, author, field) in [
        (-1, "", 0, "page_size"),
        (0, "garbage!", 0, "page_token"),
        (0, "AAAAAAAA", 0, "page_token"),
        (0, "", -3, "author_id"),
    ] {
        let status = list(&stack, size, token, author).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
}

#[tokio::test]
async fn page_sizes_default_to_ten_and_cap_at_a_hundred() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    for i in 0..12 {
        stack
            .create_post(&alice, &format!("P{i}"), "x")
            .await
            .unwrap();
    }
    assert_eq!(list(&stack, 0, "", 0).await.unwrap().posts.len(), 10);
    assert_eq!(list(&stack, 1000, "", 0).await.unwrap().posts.len(), 12);
}

#[tokio::test]
async fn a_post_request_over_256_kib_is_refused_before_it_is_read() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let status = stack
        .create_post(&alice, "big", &"x".repeat(300 * 1024))
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert_ne!(
        status.code(),
        Code::InvalidArgument,
        "it should not even be decoded: {status:?}"
    );
    assert_eq!(list(&stack, 0, "", 0).await.unwrap().total_size, 0);
    // Just under the limit is decoded and refused by validation instead.
    let status = stack
        .create_post(&alice, "big", &"x".repeat(200 * 1024))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["content"]);
}
