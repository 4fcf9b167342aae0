//! Object addresses: `DATASET/KEY`.
//!
//! A client names an object as the dataset name, a slash, and the key inside the dataset
//! (`imagenet/train/shard-000123.tar`). The key rules below are checked before a server looks
//! anything up, so no request can climb out of a dataset's prefix or smuggle bytes the origins
//! treat specially.

use std::fmt;

/// Longest key accepted (S3's own limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest dataset name accepted.
pub const MAX_DATASET_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("empty path: expected DATASET/KEY")]
    Empty,
    #[error("path {path:?} has no key: expected DATASET/KEY")]
    MissingKey { path: String },
    #[error("invalid dataset name {name:?}: {reason}")]
    Dataset { name: String, reason: &'static str },
    #[error("invalid key {key:?}: {reason}")]
    Key { key: String, reason: &'static str },
}

/// A validated `DATASET/KEY` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectPath {
    dataset: String,
    key: String,
}

impl ObjectPath {
    /// Split and validate `DATASET/KEY`.
    pub fn parse(path: &str) -> Result<ObjectPath, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        let Some((dataset, key)) = path.split_once('/') else {
            return Err(PathError::MissingKey {
                path: path.to_string(),
            });
        };
        ObjectPath::new(dataset, key)
    }

    /// Validate a dataset name and a key.
    pub fn new(dataset: &str, key: &str) -> Result<ObjectPath, PathError> {
        validate_dataset(dataset)?;
        validate_key(key)?;
        Ok(ObjectPath {
            dataset: dataset.to_string(),
            key: key.to_string(),
        })
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dataset, self.key)
    }
}

/// Dataset names: 1–128 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_dataset(name: &str) -> Result<(), PathError> {
    let err = |reason| {
        Err(PathError::Dataset {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return err("empty dataset name");
    }
    if name.len() > MAX_DATASET_LEN {
        return err("longer than 128 bytes");
    }
    if name.starts_with('.') {
        return err("starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return err("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Keys: 1–1024 bytes of UTF-8, segments separated by `/`, no empty, `.` or `..` segment (so no
/// leading, trailing or doubled slash), no NUL or other control character, no backslash.
pub fn validate_key(key: &str) -> Result<(), PathError> {
    let err = |reason| {
        Err(PathError::Key {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return err("empty key: expected DATASET/KEY");
    }
    if key.ends_with('/') {
        return err(
            "ends with '/', so it names a prefix (a directory), not an object; list its objects with `cachectl ls`",
        );
    }
    if key.len() > MAX_KEY_LEN {
        return err("longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control()) {
        return err("contains a NUL or control character");
    }
    if key.contains('\\') {
        return err("contains a backslash");
    }
    for segment in key.split('/') {
        match segment {
            "" => return err("empty path segment (leading, trailing or doubled '/')"),
            "." | ".." => return err("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        let p = ObjectPath::parse("imagenet/train/shard-000123.tar").unwrap();
        assert_eq!(p.dataset(), "imagenet");
        assert_eq!(p.key(), "train/shard-000123.tar");
        assert_eq!(p.to_string(), "imagenet/train/shard-000123.tar");
        ObjectPath::parse("ds/a..b/..c/d.").unwrap();
        ObjectPath::parse("ds/ünïcode key with spaces").unwrap();
    }

    #[test]
    fn rejects_escapes_and_junk() {
        for bad in [
            "",
            "ds",
            "ds/",
            "/ds/key",
            "ds//key",
            "ds/key/",
            "ds/../etc/passwd",
            "ds/a/../../b",
            "ds/./key",
            "ds/..",
            "ds/key\0",
            "ds/key\nx",
            "ds/a\\..\\b",
            "../ds/key",
            ".ds/key",
            "d s/key",
        ] {
            assert!(ObjectPath::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("ds/{}", "k".repeat(MAX_KEY_LEN + 1));
        assert!(ObjectPath::parse(&long).is_err());
    }

    proptest::proptest! {
        /// Arbitrary input never panics; whatever is accepted keeps every rule, so no accepted
        /// path can climb out of its dataset or name another file.
        #[test]
        fn accepted_paths_keep_the_rules(path in "(\\PC|[/.\\\\\u{0}\n]){0,40}") {
            if let Ok(p) = ObjectPath::parse(&path) {
                proptest::prop_assert!(validate_dataset(p.dataset()).is_ok());
                let key = p.key();
                proptest::prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
                proptest::prop_assert!(!key.contains('\\') && !key.chars().any(|c| c.is_control()));
                for segment in key.split('/') {
                    proptest::prop_assert!(!matches!(segment, "" | "." | ".."), "{key:?}");
                }
                proptest::prop_assert_eq!(p.to_string(), path);
            }
        }

        #[test]
        fn keys_of_plain_segments_are_accepted(segments in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,12}", 1..6)) {
            let key = segments.join("/");
            proptest::prop_assert!(ObjectPath::new("ds", &key).is_ok(), "{key:?}");
        }
    }
}
