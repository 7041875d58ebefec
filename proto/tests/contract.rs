//! Properties of the wire contract itself, read from the compiled descriptors.

use prost::Message;
use prost_types::{FileDescriptorSet, field_descriptor_proto::Type};

/// Read-only RPCs, whose request messages may name a user as a filter.
const READS: &[&str] = &[
    "GetUser",
    "GetMe",
    "GetJwks",
    "GetPost",
    "ListPosts",
    "WatchUserEvents",
];

/// Words that, as a field (`author`) or an id field (`author_id`), would let
/// a caller say who they are or who owns something. `username` is data, not
/// identity.
const IDENTITY_WORDS: &[&str] = &[
    "user", "owner", "author", "creator", "account", "caller", "subject", "sub", "uid",
];

fn names_an_identity(field: &str) -> bool {
    let words: Vec<&str> = field.split('_').collect();
    let is_identity = |w: &&str| IDENTITY_WORDS.contains(w);
    match words.as_slice() {
        [word] => is_identity(word),
        [.., last] if ["id", "ids"].contains(last) => words.iter().any(is_identity),
        _ => false,
    }
}

#[test]
fn the_identity_rule_tells_ids_from_data() {
    for bad in [
        "user_id",
        "author_id",
        "owner",
        "author",
        "user",
        "owner_ids",
        "creator_account_id",
        "sub",
    ] {
        assert!(names_an_identity(bad), "{bad}");
    }
    for fine in [
        "username",
        "username_or_email",
        "id",
        "title",
        "post_id",
        "email",
        "password",
    ] {
        assert!(!names_an_identity(fine), "{fine}");
    }
}

fn contract() -> FileDescriptorSet {
    FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap()
}

#[test]
fn no_mutating_request_has_a_field_naming_a_user_owner_or_author() {
    let set = contract();
    let messages: Vec<_> = set
        .file
        .iter()
        .filter(|f| f.package().starts_with("blog."))
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(move |m| (format!(".{}.{}", f.package(), m.name()), m))
        })
        .collect();
    let mut checked = 0;
    for file in set.file.iter().filter(|f| f.package().starts_with("blog.")) {
        for service in &file.service {
            for method in &service.method {
                if READS.contains(&method.name()) {
                    continue;
                }
                // The request message and every message nested in it.
                let mut pending = vec![method.input_type().to_owned()];
                while let Some(type_name) = pending.pop() {
                    let Some((_, message)) = messages.iter().find(|(name, _)| *name == type_name)
                    else {
                        continue;
                    };
                    for field in &message.field {
                        let name = field.name().to_lowercase();
                        assert!(
                            !names_an_identity(&name),
                            "{}.{} takes `{}`: identity must come from the token",
                            service.name(),
                            method.name(),
                            field.name()
                        );
                        if field.r#type() == Type::Message {
                            pending.push(field.type_name().to_owned());
                        }
                    }
                }
                checked += 1;
            }
        }
    }
    // Guard against the check silently covering nothing.
    assert!(checked >= 12, "only {checked} mutating RPCs checked");
}

#[test]
fn the_contract_has_every_service_design_names() {
    let set = contract();
    let services: Vec<String> = set
        .file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| format!("{}.{}", f.package(), s.name()))
        })
        .collect();
    for expected in [
        "blog.auth.v1.UserService",
        "blog.auth.v1.AuthService",
        "blog.auth.v1.UserEventService",
        "blog.posts.v1.PostService",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }
    // The well-known types are inside, for reflection clients.
    assert!(
        set.file
            .iter()
            .any(|f| f.name() == "google/protobuf/timestamp.proto")
    );
}
