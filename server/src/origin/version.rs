//! The version of an object that a read pins, and how an answer is compared with it: ETags
//! (strong or weak, quoted or not), size, and the modification time when there are no ETags.

use object_store::ObjectMeta;

/// The version of an object that a read pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    /// ETag or version id; empty when the origin gives none.
    pub etag: String,
    pub last_modified_ms: i64,
}

impl Version {
    /// The `If-Match` a read of this version carries: only strong ETags can match (RFC 9110),
    /// so a weak or missing one is checked on the answer instead.
    pub(super) fn if_match(&self) -> Option<String> {
        (!self.etag.is_empty() && !self.etag.starts_with("W/")).then(|| self.etag.clone())
    }
}

/// Whether two ETags name the same version: quotes and the weak marker aside (servers differ in
/// how they write them between HEAD, GET and LIST).
pub fn same_etag(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    norm(a) == norm(b)
}

pub(super) fn version_of(meta: &ObjectMeta) -> Version {
    Version {
        size: meta.size,
        etag: meta.e_tag.clone().unwrap_or_default(),
        last_modified_ms: meta.last_modified.timestamp_millis(),
    }
}

/// The version an answer shows, if it is not `pinned`: another ETag, size, or (when the origin
/// gives no ETags) modification time.
pub(super) fn changed(pinned: &Version, meta: &ObjectMeta) -> Option<String> {
    let found = meta.e_tag.clone().unwrap_or_default();
    if !pinned.etag.is_empty() && !found.is_empty() && !same_etag(&found, &pinned.etag) {
        return Some(found);
    }
    if meta.size != pinned.size {
        return Some(format!("{found} ({} bytes)", meta.size).trim().to_string());
    }
    if (pinned.etag.is_empty() || found.is_empty())
        && meta.last_modified.timestamp_millis() != pinned.last_modified_ms
    {
        return Some(format!(
            "a version modified at {}",
            meta.last_modified.to_rfc3339()
        ));
    }
    None
}
