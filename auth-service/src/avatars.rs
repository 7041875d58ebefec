//! Profile pictures: processed on the blocking pool, one per core at a time
//! and within a memory budget ([`MAX_PROCESSING_BYTES`], each conversion
//! reserving what its header says it can take before anything is decoded),
//! kept in an object store (local files by default, S3 when
//! configured) under fresh random keys, and addressed by absolute URLs.
//!
//! Keys are never reused, so a stored object never changes and may be cached
//! for ever; replacing a picture writes a new object and deletes the old one
//! only after the database points at the new one.

use std::sync::Arc;

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    aws::AmazonS3Builder, local::LocalFileSystem, path::Path,
};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use crate::{
    config::AvatarConfig,
    error::Result,
    images::{self, ImageError},
};

/// Where avatar objects live under the store's root.
const PREFIX: &str = "profile_pics";
/// Objects never change (keys are never reused): cache them for a year.
pub const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
/// Memory all conversions in progress may take together, in bytes: one
/// 24-megapixel photo and change, or many small pictures.
pub const MAX_PROCESSING_BYTES: usize = 256 * 1024 * 1024;
/// Length of the random part of a key: 16 bytes, base64url.
const KEY_ID_LEN: usize = 22;

/// The avatar store.
pub struct Avatars {
    /// Local directory or S3 bucket.
    store: Arc<dyn ObjectStore>,
    /// Prefix of every avatar URL: the key follows.
    public_base: String,
    /// Whether objects are local files this service serves itself.
    local: bool,
    /// Permits for concurrent image processing: one per core.
    permits: Arc<Semaphore>,
    /// Bytes of memory image processing may take, one permit per byte.
    memory: Arc<Semaphore>,
}

impl Avatars {
    /// Local files under `dir`, served at `{public_url}/avatars/`.
    pub fn local(dir: &std::path::Path, public_url: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let store =
            LocalFileSystem::new_with_prefix(dir).context("opening the avatar directory")?;
        Ok(Self::new(
            Arc::new(store),
            format!("{}/avatars", public_url.trim_end_matches('/')),
            true,
        ))
    }

    /// Local files, or S3 when a bucket is configured.
    pub fn from_config(
        config: &AvatarConfig,
        data_dir: &std::path::Path,
        public_url: &str,
    ) -> anyhow::Result<Self> {
        let Some(bucket) = &config.avatar_s3_bucket else {
            return Self::local(&data_dir.join("avatars"), public_url);
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&config.avatar_s3_region);
        if let Some(endpoint) = &config.avatar_s3_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(id) = &config.avatar_s3_access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.avatar_s3_secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        let store = builder.build().context("configuring the S3 avatar store")?;
        let public_base = match (&config.avatar_s3_public_url, &config.avatar_s3_endpoint) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(endpoint)) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, None) => format!(
                "https://{bucket}.s3.{}.amazonaws.com",
                config.avatar_s3_region
            ),
        };
        Ok(Self::new(Arc::new(store), public_base, false))
    }

    fn new(store: Arc<dyn ObjectStore>, public_base: String, local: bool) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            store,
            public_base,
            local,
            permits: Arc::new(Semaphore::new(cores)),
            memory: Arc::new(Semaphore::new(MAX_PROCESSING_BYTES)),
        }
    }

    /// The absolute URL of the object `key`, or empty when there is none.
    pub fn url(&self, key: Option<&str>) -> String {
        key.map(|key| format!("{}/{key}", self.public_base))
            .unwrap_or_default()
    }

    /// Whether this service serves the objects itself (`GET /avatars/…`).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Turns an upload into a stored 300x300 JPEG; returns its key.
    ///
    /// The permits travel with the conversion: a caller that gives up while
    /// it runs leaves it holding them until it is done, so abandoned uploads
    /// can never add up beyond the budget.
    #[tracing::instrument(skip_all, fields(bytes = upload.len()))]
    pub async fn store(&self, upload: Vec<u8>) -> Result<std::result::Result<String, ImageError>> {
        let inspected = match images::inspect(upload) {
            Ok(inspected) => inspected,
            Err(e) => return Ok(Err(e)),
        };
        // At most MAX_WORKING_BYTES (192 MiB), so it fits a u32.
        let working_bytes = u32::try_from(inspected.working_bytes())
            .context("an inspected image's cost is bounded")?;
        let core = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("image semaphore closed")?;
        let memory = self
            .memory
            .clone()
            .acquire_many_owned(working_bytes)
            .await
            .context("image memory semaphore closed")?;
        let span = tracing::Span::current();
        let jpeg = tokio::task::spawn_blocking(move || {
            let _permits = (core, memory);
            span.in_scope(|| inspected.to_avatar())
        })
        .await
        .context("image processing task failed")?;
        let jpeg = match jpeg {
            Ok(jpeg) => jpeg,
            Err(e) => return Ok(Err(e)),
        };
        let key = format!(
            "{PREFIX}/{}.jpg",
            URL_SAFE_NO_PAD.encode(shared::secret::random_bytes::<16>())
        );
        // Served straight from the bucket, the object carries its own
        // headers; local files get theirs from our HTTP handler.
        let mut options = PutOptions::default();
        if !self.local {
            options.attributes = Attributes::from_iter([
                (Attribute::ContentType, "image/jpeg"),
                (Attribute::CacheControl, CACHE_CONTROL),
            ]);
        }
        self.store
            .put_opts(&Path::from(key.as_str()), PutPayload::from(jpeg), options)
            .await
            .context("storing an avatar")?;
        Ok(Ok(key))
    }

    /// Deletes the object `key`. Failures are logged, not raised: the
    /// database no longer points at it, so at worst it is an orphan.
    pub async fn delete(&self, key: &str) {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(key, error = %e, "cannot delete an avatar object"),
        }
    }

    /// The bytes of the object `key`, if it is an avatar and exists.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if !is_avatar_key(key) {
            return Ok(None);
        }
        match self.store.get(&Path::from(key)).await {
            Ok(object) => Ok(Some(
                object.bytes().await.context("reading an avatar")?.to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::Error::from(e).context("reading an avatar").into()),
        }
    }

    /// Every stored avatar key.
    pub async fn keys(&self) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let prefix = Path::from(PREFIX);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .context("listing avatars")?;
        Ok(objects
            .into_iter()
            .map(|o| o.location.to_string())
            .collect())
    }
}

/// Whether `key` has the shape of a key this service made: nothing else
/// (no `..`, no other directory) is ever read.
fn is_avatar_key(key: &str) -> bool {
    key.strip_prefix("profile_pics/")
        .and_then(|name| name.strip_suffix(".jpg"))
        .is_some_and(|id| {
            id.len() == KEY_ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_of_our_own_shape_are_read() {
        assert!(is_avatar_key("profile_pics/AbC-_09AbC-_09AbC-_09A.jpg"));
        let too_long = format!("profile_pics/{}.jpg", "a".repeat(250));
        for bad in [
            too_long.as_str(),
            "profile_pics/AbC-_09.jpg",
            "profile_pics/../users.db",
            "profile_pics/.jpg",
            "other/x.jpg",
            "profile_pics/x.png",
            "profile_pics/a/b.jpg",
        ] {
            assert!(!is_avatar_key(bad), "{bad}");
        }
    }
}
