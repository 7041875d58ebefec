//! Revoked sessions and deleted users, held in memory so the interceptor can
//! refuse their tokens on every call without a database round trip. Loaded
//! from the database at start and fed by the event replica; an entry lives
//! until every token it could refuse has expired.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use shared::{
    current_user::{CurrentUser, RevocationCheck},
    time::Timestamp,
};

use crate::store::RevocationSnapshot;

/// The revocations in force.
#[derive(Debug, Default)]
pub struct Revocations {
    /// Revoked session id -> when its last token expires.
    sessions: RwLock<HashMap<String, Timestamp>>,
    /// Deleted user id -> until when to refuse their tokens.
    users: RwLock<HashMap<i64, Timestamp>>,
}

impl Revocations {
    /// Replaces everything with `snapshot`; deleted users are refused for
    /// `window` after their deletion.
    pub fn load(&self, snapshot: RevocationSnapshot, window: Duration) {
        *self.sessions.write().unwrap_or_else(|e| e.into_inner()) =
            snapshot.sessions.into_iter().collect();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = snapshot
            .deleted_users
            .into_iter()
            .map(|(id, deleted)| (id, deleted + window))
            .collect();
    }

    /// Refuses these sessions' tokens until `until`.
    pub fn revoke_sessions(&self, ids: &[String], until: Timestamp) {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            sessions.insert(id.clone(), until);
        }
    }

    /// Refuses every token of `user_id` until `until`.
    pub fn user_deleted(&self, user_id: i64, until: Timestamp) {
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user_id, until);
    }

    /// Forgets entries whose tokens have all expired by `now`.
    pub fn prune(&self, now: Timestamp) {
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, until| *until > now);
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, until| *until > now);
    }

    /// How many sessions and users are held.
    pub fn len(&self) -> (usize, usize) {
        (
            self.sessions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            self.users.read().unwrap_or_else(|e| e.into_inner()).len(),
        )
    }
}

impl RevocationCheck for Revocations {
    fn is_revoked(&self, user: &CurrentUser) -> bool {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&user.id)
            || self
                .sessions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&user.session_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, session: &str) -> CurrentUser {
        CurrentUser {
            id,
            username: "u".into(),
            session_id: session.into(),
            expires_at: 0,
        }
    }

    #[test]
    fn revoked_sessions_and_deleted_users_are_refused_until_pruned() {
        let revocations = Revocations::default();
        revocations.revoke_sessions(&["s1".into()], Timestamp::from_micros(100));
        revocations.user_deleted(7, Timestamp::from_micros(200));
        assert!(revocations.is_revoked(&user(1, "s1")));
        assert!(revocations.is_revoked(&user(7, "s9")));
        assert!(!revocations.is_revoked(&user(1, "s2")));
        revocations.prune(Timestamp::from_micros(150));
        assert!(!revocations.is_revoked(&user(1, "s1")));
        assert!(revocations.is_revoked(&user(7, "s9")));
        assert_eq!(revocations.len(), (0, 1));
    }
}
