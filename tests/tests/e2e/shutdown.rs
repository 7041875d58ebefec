//! Graceful shutdown: calls in flight when the stop signal comes finish
//! normally; calls after it are refused.

use std::time::Duration;

use proto::auth::CreateUserRequest;

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
                    .map(|_| std::time::Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let stop_began = std::time::Instant::now();
    stack.auth_service.stop().await;

    let mut finished_after_stop = 0;
    for call in calls {
        let finished = call.await.unwrap().expect("an in-flight call failed");
        finished_after_stop += usize::from(finished > stop_began);
    }
    // Otherwise nothing was in flight and the test proved nothing.
    assert!(
        finished_after_stop > 0,
        "every call had finished before the stop"
    );
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
