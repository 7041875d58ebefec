//! The gRPC methods our servers answer, read once from the contract's
//! descriptors (plus health and reflection).
//!
//! A request path is chosen by the client, so nothing keyed by it may grow
//! with what clients send: metric labels, spans and admission decisions go
//! through [`lookup`], which knows a fixed set of methods and folds every
//! other path into [`UNKNOWN`].

use std::{collections::HashMap, sync::LazyLock};

use prost::Message;
use prost_types::FileDescriptorSet;

/// What the servers need to know about one method.
#[derive(Debug, PartialEq, Eq)]
pub struct Method {
    /// Full service name, e.g. `blog.posts.v1.PostService`.
    pub service: &'static str,
    /// Method name, e.g. `CreatePost`.
    pub name: &'static str,
    /// Whether the client sends a stream of messages rather than one.
    pub client_streaming: bool,
    /// Whether the server answers with a stream of messages.
    pub server_streaming: bool,
}

/// Every path that names no method we know.
pub static UNKNOWN: Method = Method {
    service: "unknown",
    name: "unknown",
    client_streaming: false,
    server_streaming: false,
};

/// The known methods by path (`/package.Service/Method`).
static METHODS: LazyLock<HashMap<String, Method>> = LazyLock::new(|| {
    let sets = [
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashMap::new();
    for set in sets {
        // Compiled into the binary by the build: a set that does not decode
        // is a broken build, not a runtime condition.
        let set = FileDescriptorSet::decode(set).expect("embedded descriptor sets decode");
        for file in set.file {
            for service in &file.service {
                let service_name: &'static str =
                    Box::leak(format!("{}.{}", file.package(), service.name()).into_boxed_str());
                for method in &service.method {
                    let name: &'static str = Box::leak(method.name().to_owned().into_boxed_str());
                    methods.insert(
                        format!("/{service_name}/{name}"),
                        Method {
                            service: service_name,
                            name,
                            client_streaming: method.client_streaming(),
                            server_streaming: method.server_streaming(),
                        },
                    );
                }
            }
        }
    }
    methods
});

/// The method at `path`, or [`UNKNOWN`].
pub fn lookup(path: &str) -> &'static Method {
    METHODS.get(path).unwrap_or(&UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_health_and_reflection_methods_are_known_with_their_shapes() {
        let create = lookup("/blog.posts.v1.PostService/CreatePost");
        assert_eq!(
            (create.service, create.name),
            ("blog.posts.v1.PostService", "CreatePost")
        );
        assert!(!create.client_streaming && !create.server_streaming);
        assert!(lookup("/blog.auth.v1.UserEventService/WatchUserEvents").server_streaming);
        assert!(lookup("/grpc.health.v1.Health/Watch").server_streaming);
        let reflection = lookup("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
        assert!(reflection.client_streaming && reflection.server_streaming);
        assert!(
            lookup("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                .client_streaming
        );
    }

    #[test]
    fn any_other_path_is_unknown() {
        for path in [
            "",
            "/",
            "/blog.posts.v1.PostService/Nope",
            "/blog.posts.v1.PostService/CreatePost/",
            "/x/y",
        ] {
            assert_eq!(lookup(path), &UNKNOWN, "{path}");
        }
    }
}
