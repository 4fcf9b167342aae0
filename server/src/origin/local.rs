//! `file://` datasets that stay inside their directory.
//!
//! object_store's [`LocalFileSystem`] follows symlinks wherever they lead, so a link in a dataset
//! directory (`train/x -> /etc/shadow`, a linked directory) would serve files from anywhere the
//! server can read. [`Confined`] checks every file it reads where it really is: after the file
//! is opened, the path the kernel gives for the open descriptor (`/proc/self/fd/N`) must lie
//! under the dataset directory — the check is on the file that will be read, so swapping a file
//! for a link between a check and the open gains nothing. Listings leave out entries that lead
//! outside. A dataset with `follow_symlinks = true` skips this.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// A local directory whose files are served only if they really lie inside it.
#[derive(Debug)]
pub struct Confined {
    inner: Arc<LocalFileSystem>,
    /// The directory, symlinks resolved.
    root: PathBuf,
}

impl std::fmt::Display for Confined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Confined({})", self.root.display())
    }
}

impl Confined {
    pub fn new(inner: LocalFileSystem, dir: &std::path::Path) -> std::io::Result<Confined> {
        Ok(Confined {
            inner: Arc::new(inner),
            root: dir.canonicalize()?,
        })
    }

    fn outside(&self, location: &Path) -> object_store::Error {
        object_store::Error::PermissionDenied {
            path: location.to_string(),
            source: format!(
                "{location} is a symlink that leads out of the dataset directory {} (set follow_symlinks = true on the dataset to allow it)",
                self.root.display()
            )
            .into(),
        }
    }

    /// Whether the filesystem entry for `location` resolves inside the root (entries that do not
    /// resolve, such as dangling links, count as outside).
    fn inside(&self, location: &Path) -> bool {
        inside(&self.inner, &self.root, location)
    }
}

fn inside(fs: &LocalFileSystem, root: &std::path::Path, location: &Path) -> bool {
    fs.path_to_filesystem(location)
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .is_some_and(|real| real.starts_with(root))
}

#[async_trait::async_trait]
impl ObjectStore for Confined {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let result = self.inner.get_opts(location, options).await?;
        if let GetResultPayload::File(file, _) = &result.payload {
            let fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            let real = std::fs::read_link(&fd).map_err(|e| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: format!("cannot resolve the opened file of {location}: {e}").into(),
            })?;
            if !real.starts_with(&self.root) {
                return Err(self.outside(location));
            }
        }
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (fs, root) = (self.inner.clone(), self.root.clone());
        self.inner
            .list(prefix)
            .filter(move |item| {
                let keep = match item {
                    Ok(meta) => inside(&fs, &root, &meta.location),
                    Err(_) => true,
                };
                std::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result.objects.retain(|m| self.inside(&m.location));
        result.common_prefixes.retain(|p| self.inside(p));
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn links_out_of_the_directory_are_refused_and_unlisted() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"not for trainers").unwrap();
        std::fs::create_dir(outside.path().join("dir")).unwrap();
        std::fs::write(outside.path().join("dir/f"), b"nor this").unwrap();
        let ds = tempfile::tempdir().unwrap();
        std::fs::write(ds.path().join("real.bin"), b"data").unwrap();
        std::fs::create_dir(ds.path().join("sub")).unwrap();
        std::fs::write(ds.path().join("sub/inner.bin"), b"inner").unwrap();
        let link = |target: PathBuf, name: &str| {
            std::os::unix::fs::symlink(target, ds.path().join(name)).unwrap()
        };
        link(outside.path().join("secret"), "escape");
        link(outside.path().join("dir"), "escapedir");
        link(ds.path().join("sub/inner.bin"), "inside-link");
        link(PathBuf::from("../../../../../../etc/hostname"), "relative");

        let store = Confined::new(
            LocalFileSystem::new_with_prefix(ds.path()).unwrap(),
            ds.path(),
        )
        .unwrap();
        assert_eq!(
            &store
                .get(&Path::from("real.bin"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()[..],
            b"data"
        );
        assert_eq!(
            &store
                .get(&Path::from("inside-link"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()[..],
            b"inner"
        );
        for key in ["escape", "escapedir/f", "relative"] {
            let e = store.get(&Path::from(key)).await.unwrap_err();
            assert!(
                matches!(e, object_store::Error::PermissionDenied { .. }),
                "{key}: {e}"
            );
            assert!(e.to_string().contains("follow_symlinks"), "{e}");
            let e = store.head(&Path::from(key)).await.unwrap_err();
            assert!(
                matches!(e, object_store::Error::PermissionDenied { .. }),
                "{key}: {e}"
            );
        }
        let mut listed: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        listed.sort();
        assert_eq!(listed, ["inside-link", "real.bin", "sub/inner.bin"]);
        let top = store.list_with_delimiter(None).await.unwrap();
        let prefixes: Vec<String> = top.common_prefixes.iter().map(|p| p.to_string()).collect();
        assert_eq!(prefixes, ["sub"]);
    }
}
