//! Graceful shutdown: calls in flight when the stop signal comes finish
//! normally; calls after it are refused.

use std::time::Duration;

use shared::proto::auth::CreateUserRequest;

use crate::helpers::spawn_stack;

#[tokio::test]
async fn stopping_lets_in_flight_calls_finish_and_refuses_new_ones() {
    let mut stack = spawn_stack().await;
    // Registrations hash a password on a pool bounded by the cores, so many
    // at once keep the server busy for a while.
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut users = stack.users.clone();
            tokio::spawn(async move {
                let id = testkit::unique_id();
                users
                    .create_user(CreateUserRequest {
                        username: format!("inflight_{i}_{id}"),
                        email: format!("inflight_{i}_{id}@example.com"),
                        password: "a long enough password".into(),
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    stack.auth_service.stop().await;

    for call in calls {
        let result = call.await.unwrap();
        assert!(result.is_ok(), "an in-flight call failed: {result:?}");
    }
    let after = stack
        .users
        .clone()
        .create_user(CreateUserRequest {
            username: "too_late".into(),
            email: "too_late@example.com".into(),
            password: "a long enough password".into(),
        })
        .await;
    assert!(after.is_err(), "a call after the stop was served");
}
