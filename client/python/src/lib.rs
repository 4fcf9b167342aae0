//! Native part of the `shardcache` Python package: the blocking Rust client, with the GIL
//! released around every call that waits on I/O. The Python layer (`python/shardcache`) adds
//! error classes, file objects, the dataset and the fsspec filesystem.
//!
//! Fork safety: PyTorch's DataLoader starts its workers with `fork`. A forked child has a copy
//! of the parent's client — its connections and the runtime whose threads drive them — but
//! none of those threads. Every call therefore checks the process id: in a new process the
//! client connects again, and the parent's state is leaked, not dropped (dropping a runtime
//! waits for threads that do not exist there). `os.register_at_fork` in the Python layer
//! also tells every live client at the fork itself.
//!
//! No `unsafe` here (the workspace forbids it): the caller's buffer arrives as a ctypes array,
//! which shardcache-mem turns into a slice (`shardcache_mem::ctypes`).

use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use shardcache_client::{
    BlockingClient, ClientError, ClientOptions, ControlClient, ControlError, ErrorCode,
};

pyo3::create_exception!(
    _shardcache,
    NativeError,
    PyException,
    "An error of the native client: args are (kind, message); the Python layer turns it into a ShardcacheError subclass."
);

/// The kind of a client error, as the Python layer maps it to exception classes.
fn kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Server { code, .. } => match code {
            ErrorCode::NotFound | ErrorCode::UnknownDataset => "not_found",
            ErrorCode::InvalidKey | ErrorCode::BadRequest | ErrorCode::RangeNotSatisfiable => {
                "invalid"
            }
            ErrorCode::PreconditionFailed => "version_changed",
            ErrorCode::Busy => "busy",
            ErrorCode::OriginUnavailable => "unavailable",
            ErrorCode::TooLarge => "invalid",
            ErrorCode::Forbidden | ErrorCode::Unauthenticated => "permission",
            _ => "server",
        },
        ClientError::Timeout { .. } => "timeout",
        ClientError::Connect { .. } | ClientError::ConnectionLost { .. } => "connection",
        ClientError::Checksum { .. } => "checksum",
        ClientError::Endpoint { .. }
        | ClientError::InvalidPath(_)
        | ClientError::BufferTooSmall { .. } => "invalid",
        _ => "client",
    }
}

fn to_py(e: ClientError) -> PyErr {
    NativeError::new_err((kind(&e), e.to_string()))
}

/// State that belongs to one process: made in the process that uses it, made again after a
/// fork.
struct PerProcess<T> {
    slot: Mutex<Option<(u32, Arc<T>)>>,
}

impl<T> PerProcess<T> {
    fn new(pid: u32, value: T) -> PerProcess<T> {
        PerProcess {
            slot: Mutex::new(Some((pid, Arc::new(value)))),
        }
    }

    /// This process's value: the existing one, or `make()` (run without the GIL) in a process
    /// that has none yet. The lock is only held with the GIL, never across `make`, so a fork
    /// (which needs the GIL) never copies it held.
    fn get(&self, py: Python<'_>, make: impl FnOnce() -> PyResult<T> + Send) -> PyResult<Arc<T>>
    where
        T: Send + Sync,
    {
        let pid = std::process::id();
        {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some((owner, value)) if *owner == pid => return Ok(value.clone()),
                Some(_) => {
                    // Another process's: its threads are not here to finish a drop.
                    std::mem::forget(slot.take());
                }
                None => {}
            }
        }
        let made = Arc::new(py.detach(make)?);
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            // Another thread of this process connected meanwhile: use its.
            Some((owner, value)) if *owner == pid => Ok(value.clone()),
            _ => {
                *slot = Some((pid, made.clone()));
                Ok(made)
            }
        }
    }

    /// The process forked and this is the child: forget the parent's value.
    fn forget(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot
            .as_ref()
            .is_some_and(|(owner, _)| *owner != std::process::id())
        {
            std::mem::forget(slot.take());
        }
    }
}

/// A connection to a shardcache server (TCP `host:port`, `quic://host:port`, or a Unix socket
/// path for the local shared-memory path).
#[pyclass(name = "Client", module = "shardcache._shardcache", frozen)]
struct Client {
    conn: PerProcess<BlockingClient>,
    endpoint: String,
    options: ClientOptions,
}

impl Client {
    fn conn(&self, py: Python<'_>) -> PyResult<Arc<BlockingClient>> {
        self.conn.get(py, || {
            BlockingClient::connect_with(&self.endpoint, self.options.clone()).map_err(to_py)
        })
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (endpoint, *, connections = 4, insecure = false, tls_ca = None, timeout = 60.0, retries = 2, token = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        endpoint: String,
        connections: usize,
        insecure: bool,
        tls_ca: Option<std::path::PathBuf>,
        timeout: f64,
        retries: u32,
        token: Option<String>,
    ) -> PyResult<Client> {
        if !(timeout > 0.0 && timeout.is_finite()) {
            return Err(PyValueError::new_err(
                "timeout must be a positive number of seconds",
            ));
        }
        let options = ClientOptions {
            connections,
            insecure_skip_verify: insecure,
            tls_ca,
            idle_timeout: std::time::Duration::from_secs_f64(timeout),
            retries,
            token,
            ..ClientOptions::default()
        };
        let inner = py
            .detach(|| BlockingClient::connect_with(&endpoint, options.clone()))
            .map_err(to_py)?;
        Ok(Client {
            conn: PerProcess::new(std::process::id(), inner),
            endpoint,
            options,
        })
    }

    #[getter]
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Called in a forked child (`os.register_at_fork`): connect again on the next call.
    fn _forget_after_fork(&self) {
        self.conn.forget();
    }

    /// Bytes of `path` from `offset` (to the end when `length` is None), at version `if_match`
    /// when given.
    #[pyo3(signature = (path, offset = 0, length = None, if_match = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        path: String,
        offset: u64,
        length: Option<u64>,
        if_match: Option<String>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let client = self.conn(py)?;
        let (_, bytes) = py
            .detach(|| {
                client.block_on(client.client().read_pinned(&path, offset, length, if_match))
            })
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Read into the memory of `array`, a `ctypes.Array` (a TypeError otherwise; its address
    /// and size come from ctypes), which the caller keeps alive and does not touch for the
    /// duration of the call (the Python layer makes it from a writable buffer with
    /// `from_buffer`): `length` bytes from `offset` (fewer at the end of the object), or with
    /// `length` None all of the object from `offset`, which must fit.
    #[pyo3(signature = (path, array, offset = 0, length = None, if_match = None))]
    fn _read_into_array(
        &self,
        py: Python<'_>,
        path: String,
        array: &Bound<'_, PyAny>,
        offset: u64,
        length: Option<usize>,
        if_match: Option<String>,
    ) -> PyResult<usize> {
        let mut bytes = shardcache_mem::ctypes::CtypesBytes::borrow(array)?;
        let capacity = bytes.len();
        if let Some(length) = length
            && length > capacity
        {
            return Err(NativeError::new_err((
                "invalid",
                format!("length {length} is more than the buffer's {capacity} bytes"),
            )));
        }
        let client = self.conn(py)?;
        let buf = bytes.as_mut_slice();
        let buf: &mut [u8] = match length {
            Some(length) => &mut buf[..length],
            None => buf,
        };
        py.detach(|| {
            let c = client.client();
            client.block_on(async {
                match length {
                    Some(0) => Ok(0),
                    Some(_) => c.read_into_pinned(&path, offset, buf, if_match).await,
                    None => c.read_into_all(&path, offset, buf, if_match).await,
                }
            })
        })
        .map_err(to_py)
    }

    /// Hint the objects to be read next, in order; returns how many the server queued.
    fn prefetch(&self, py: Python<'_>, paths: Vec<String>) -> PyResult<u32> {
        let client = self.conn(py)?;
        py.detach(|| client.block_on(client.client().prefetch(&paths)))
            .map_err(to_py)
    }

    /// Size, ETag, last modification (ms since the epoch) and block size of `path`.
    fn stat<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyDict>> {
        let client = self.conn(py)?;
        let info = py.detach(|| client.stat(&path)).map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("size", info.size)?;
        d.set_item("etag", info.etag)?;
        d.set_item("last_modified_ms", info.last_modified_ms)?;
        d.set_item("block_size", info.block_size)?;
        Ok(d)
    }

    /// `(node_id, instance, version, control)`: who the server is and where its control plane
    /// is reached from here (None when it has none).
    fn server_info(&self, py: Python<'_>) -> PyResult<(String, u64, String, Option<String>)> {
        let client = self.conn(py)?;
        py.detach(|| {
            let info = client.block_on(client.client().server_info())?;
            let control =
                shardcache_client::control_endpoint_for(&info.control, client.client().endpoint());
            Ok((info.node_id, info.instance, info.version, control))
        })
        .map_err(to_py)
    }

    /// Benchmark baseline: read each of `paths` into one Rust-owned buffer of `size` bytes,
    /// `rounds` times, in Rust alone (no Python per read); returns the seconds taken.
    fn _bench_read_into(
        &self,
        py: Python<'_>,
        paths: Vec<String>,
        rounds: usize,
        size: usize,
    ) -> PyResult<f64> {
        let client = self.conn(py)?;
        py.detach(|| {
            // Touched before the clock starts, like the caller's preallocated numpy buffer.
            let mut buf = vec![1u8; size];
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                for path in &paths {
                    client.block_on(client.client().read_into(path, 0, &mut buf))?;
                }
            }
            Ok(started.elapsed().as_secs_f64())
        })
        .map_err(to_py)
    }

    fn __repr__(&self) -> String {
        format!("Client({:?})", self.endpoint)
    }
}

/// The kind of a control-plane error, as the Python layer maps it.
fn control_kind(e: &ControlError) -> &'static str {
    match e {
        ControlError::Connect { .. } => "connection",
        ControlError::Invalid(_) => "invalid",
        ControlError::Status(s) => match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => "permission",
            tonic::Code::NotFound => "not_found",
            tonic::Code::InvalidArgument => "invalid",
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted => "unavailable",
            tonic::Code::DeadlineExceeded => "timeout",
            _ => "server",
        },
    }
}

fn control_err(e: ControlError) -> PyErr {
    NativeError::new_err((control_kind(&e), e.to_string()))
}

/// A connection to a node's control plane (`host:7072`): list and warm.
#[pyclass(name = "Control", module = "shardcache._shardcache", frozen)]
struct Control {
    conn: PerProcess<ControlConn>,
    endpoint: String,
    token: Option<String>,
    tls_ca: Option<std::path::PathBuf>,
}

/// A control client and the runtime its calls run on.
struct ControlConn {
    runtime: tokio::runtime::Runtime,
    client: ControlClient,
}

impl ControlConn {
    fn connect(
        endpoint: &str,
        token: Option<String>,
        tls_ca: Option<&std::path::Path>,
    ) -> PyResult<ControlConn> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| {
                NativeError::new_err(("client", format!("cannot start a runtime: {e}")))
            })?;
        let client = runtime
            .block_on(ControlClient::connect(endpoint, token, tls_ca))
            .map_err(control_err)?;
        Ok(ControlConn { runtime, client })
    }
}

impl Control {
    fn conn(&self, py: Python<'_>) -> PyResult<Arc<ControlConn>> {
        self.conn.get(py, || {
            ControlConn::connect(&self.endpoint, self.token.clone(), self.tls_ca.as_deref())
        })
    }
}

#[pymethods]
impl Control {
    #[new]
    #[pyo3(signature = (endpoint, *, token = None, tls_ca = None))]
    fn new(
        py: Python<'_>,
        endpoint: String,
        token: Option<String>,
        tls_ca: Option<std::path::PathBuf>,
    ) -> PyResult<Control> {
        let conn =
            py.detach(|| ControlConn::connect(&endpoint, token.clone(), tls_ca.as_deref()))?;
        Ok(Control {
            conn: PerProcess::new(std::process::id(), conn),
            endpoint,
            token,
            tls_ca,
        })
    }

    /// Called in a forked child (`os.register_at_fork`): connect again on the next call.
    fn _forget_after_fork(&self) {
        self.conn.forget();
    }

    /// `(node_id, instance)` of the server this control plane belongs to.
    fn health(&self, py: Python<'_>) -> PyResult<(String, u64)> {
        let c = self.conn(py)?;
        let resp = py
            .detach(|| c.runtime.block_on(c.client.health()))
            .map_err(control_err)?;
        Ok((resp.node_id, resp.instance))
    }

    /// `(key, size, etag, cached_fraction)` of every object under `DATASET/PREFIX`.
    fn ls(&self, py: Python<'_>, path: String) -> PyResult<Vec<(String, u64, String, f64)>> {
        let c = self.conn(py)?;
        let resp = py
            .detach(|| c.runtime.block_on(c.client.list(&path)))
            .map_err(control_err)?;
        Ok(resp
            .objects
            .into_iter()
            .map(|o| (o.key, o.size, o.etag, o.cached_fraction))
            .collect())
    }

    /// Warm `DATASET/PREFIX` to the end: `(objects, bytes, bytes_already_cached, failures)`
    /// with failures as `(path, message)`.
    #[pyo3(signature = (path, replicas = 1, all_nodes = false))]
    #[allow(clippy::type_complexity)]
    fn warm(
        &self,
        py: Python<'_>,
        path: String,
        replicas: u32,
        all_nodes: bool,
    ) -> PyResult<(u64, u64, u64, Vec<(String, String)>)> {
        let c = self.conn(py)?;
        py.detach(|| {
            c.runtime.block_on(async {
                let mut stream = c
                    .client
                    .warm(shardcache_client::control_proto::WarmRequest {
                        path: path.clone(),
                        replicas,
                        all_nodes,
                        manifest: false,
                        detach: false,
                    })
                    .await?;
                let mut failures = Vec::new();
                while let Some(p) = stream.message().await.map_err(ControlError::from)? {
                    failures.extend(
                        p.failures
                            .iter()
                            .map(|f| (f.path.clone(), f.message.clone())),
                    );
                    if p.done {
                        return Ok((p.objects_done, p.bytes_done, p.bytes_skipped, failures));
                    }
                }
                Err(ControlError::Invalid(format!(
                    "the warm of {path} ended before it finished; run it again to finish"
                )))
            })
        })
        .map_err(control_err)
    }
}

#[pymodule]
fn _shardcache(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Control>()?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
