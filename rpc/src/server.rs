//! The JSON-RPC socket server.
//!
//! Socket I/O stays off the reactors: an acceptor thread and one thread per connection do the
//! blocking reads and writes, so data reactors never make a syscall for RPC and a call is
//! answered as soon as its handler replies (no polling interval; SPDK polls every 4 ms). Each
//! validated request is handed to a [`Dispatch`] function — in keel-tgt it sends the call to the
//! main reactor by message, runs the handler there and returns the reply over a channel — and
//! requests of one connection are answered in order.
//!
//! # Connections
//!
//! At most [`MAX_CONNECTIONS`] are served at once (SPDK's limit). One more is not dropped
//! without a word: a single refusal thread reads its first request (for at most
//! [`REFUSAL_READ`]) and answers it with -16 (EBUSY) "too many RPC connections", id echoed,
//! then closes it; while that thread is behind by [`REFUSAL_BACKLOG`] connections, further ones
//! are closed at once. A connection that holds no request — nothing received for
//! [`ServerOpts::idle_timeout`] while no call of it is running — is closed, so idle clients
//! cannot keep everyone else out (a call that takes long, such as `dm_wait`, is never cut: the
//! clock runs only while the connection waits for bytes). A request is at most
//! [`crate::jsonrpc::MAX_REQUEST_BYTES`] however it is chunked (the framer's rule).
//!
//! Housekeeping follows SPDK: an exclusive lock on `<path>.lock` decides ownership, so a socket
//! left behind by a dead process is replaced while a live server's socket is never stolen. The
//! socket is created owner-only (0600 unless configured) inside a private temporary directory and
//! renamed into place, so it is never reachable with wider permissions. Both files are removed
//! when the server stops.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{RpcError, INTERNAL_ERROR, INVALID_REQUEST};
use crate::jsonrpc::{encode, id_text, parse_request, raw_id, response, response_text, Frame, Framer, Request};

/// SPDK's limit of simultaneous connections; one more is answered with an error and closed
/// (module docs).
pub const MAX_CONNECTIONS: usize = 64;

/// How long the refusal thread waits for the first request of a connection over the limit
/// before it answers with a null id.
pub const REFUSAL_READ: Duration = Duration::from_secs(1);

/// Connections over the limit that may wait for the refusal thread; more are closed at once.
pub const REFUSAL_BACKLOG: usize = 64;

/// Default [`ServerOpts::idle_timeout`]: long enough for any interactive client between two
/// calls on one connection (rpc.py opens one per call), short enough that 64 forgotten
/// connections free their slots within a minute.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one request and calls the reply function exactly once, from any thread.
pub type Dispatch = Arc<dyn Fn(Request, Box<dyn FnOnce(Result<Value, RpcError>) + Send>) + Send + Sync>;

/// Server options.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub path: PathBuf,
    /// Permission bits of the socket file (default 0o600).
    pub mode: u32,
    /// A connection that receives nothing for this long while none of its calls runs is closed
    /// ([`DEFAULT_IDLE_TIMEOUT`]; `None` = never).
    pub idle_timeout: Option<Duration>,
}

impl ServerOpts {
    /// Owner-only socket at `path`, idle connections closed after [`DEFAULT_IDLE_TIMEOUT`].
    pub fn new(path: impl Into<PathBuf>) -> ServerOpts {
        ServerOpts {
            path: path.into(),
            mode: 0o600,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// A listening server. Dropping it (or [`RpcServer::stop`]) closes the listener, removes the
/// socket and lock files and lets connection threads finish.
pub struct RpcServer {
    path: PathBuf,
    lock_path: PathBuf,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    _lock: File,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> RpcError {
    move |e| RpcError::new(-e.raw_os_error().unwrap_or(libc::EIO), format!("{context}: {e}"))
}

impl RpcServer {
    /// Binds the socket and starts accepting. Fails if another live process owns the path.
    pub fn start(opts: &ServerOpts, dispatch: Dispatch) -> Result<RpcServer, RpcError> {
        let path = opts.path.clone();
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("cannot open lock file {}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RpcError::new(
                    -libc::EADDRINUSE,
                    format!("RPC socket {} is in use by another process", path.display()),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_err(format!("cannot lock {}", lock_path.display()))(e));
            }
        }
        // We own the path now: whatever socket file is there belongs to a dead process.
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "replaced stale RPC socket"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("cannot remove stale socket {}", path.display()))(e)),
        }
        let listener = bind_private(&path, opts.mode)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let st = stopping.clone();
        let idle = opts.idle_timeout;
        let acceptor = std::thread::Builder::new()
            .name("rpc_accept".into())
            .spawn(move || accept_loop(listener, dispatch, st, idle))
            .map_err(io_err("cannot start RPC thread".into()))?;
        Ok(RpcServer {
            path,
            lock_path,
            stopping,
            acceptor: Some(acceptor),
            _lock: lock,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket and lock files.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the acceptor with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind_private(path: &Path, mode: u32) -> Result<UnixListener, RpcError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| RpcError::invalid_params("socket path has no file name"))?;
    let tmp_dir = parent.join(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp_dir)
        .map_err(io_err(format!("cannot create {}", tmp_dir.display())))?;
    let tmp_sock = tmp_dir.join("sock");
    let result = (|| {
        let l = UnixListener::bind(&tmp_sock).map_err(io_err(format!("cannot bind {}", path.display())))?;
        std::fs::set_permissions(&tmp_sock, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("cannot chmod {}", path.display())))?;
        std::fs::rename(&tmp_sock, path).map_err(io_err(format!("cannot create {}", path.display())))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&tmp_dir);
    result
}

fn accept_loop(listener: UnixListener, dispatch: Dispatch, stopping: Arc<AtomicBool>, idle: Option<Duration>) {
    let live = Arc::new(AtomicUsize::new(0));
    let refusals = start_refusals();
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        if live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            tracing::warn!("RPC connection refused: {MAX_CONNECTIONS} already open");
            // The refusal thread answers it; if it is that far behind, close at once.
            if let Some(tx) = &refusals {
                let _ = tx.try_send(stream);
            }
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let (d, l, st) = (dispatch.clone(), live.clone(), stopping.clone());
        let spawned = std::thread::Builder::new().name("rpc_conn".into()).spawn(move || {
            serve_connection(stream, &d, &st, idle);
            l.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The thread that answers connections over the limit (module docs). `None` if it cannot
/// start (connections over the limit are then closed without an answer).
fn start_refusals() -> Option<mpsc::SyncSender<UnixStream>> {
    let (tx, rx) = mpsc::sync_channel::<UnixStream>(REFUSAL_BACKLOG);
    std::thread::Builder::new()
        .name("rpc_refuse".into())
        .spawn(move || {
            for stream in rx {
                refuse(stream);
            }
        })
        .ok()?;
    Some(tx)
}

/// The error a connection over the limit gets.
fn too_many() -> RpcError {
    RpcError::new(
        -libc::EBUSY,
        format!(
            "Device or resource busy: too many RPC connections ({MAX_CONNECTIONS} open; idle ones are closed after a while), try again later"
        ),
    )
}

/// Reads the first request of `stream` (for at most [`REFUSAL_READ`]), answers every call in
/// it with [`too_many`] (or one null-id error if none came) and closes.
fn refuse(mut stream: UnixStream) {
    let busy: Dispatch = Arc::new(|_req: Request, reply| reply(Err(too_many())));
    let deadline = Instant::now() + REFUSAL_READ;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut framer = Framer::default();
    let mut buf = [0u8; 16 * 1024];
    let out = loop {
        if let Some(frame) = framer.next_frame() {
            break match frame {
                Frame::Value(v) => handle_frame(&v, &busy),
                Frame::Fatal(e) => Some(encode(&response(None, Err(e)))),
            };
        }
        if Instant::now() >= deadline {
            break Some(encode(&response(None, Err(too_many()))));
        }
        match stream.read(&mut buf) {
            Ok(0) => break Some(encode(&response(None, Err(too_many())))),
            Ok(n) => framer.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => break None,
        }
    };
    if let Some(text) = out {
        let _ = stream.set_write_timeout(Some(REFUSAL_READ));
        let _ = stream.write_all(text.as_bytes());
    }
}

/// An answer at least this long (a listing of thousands of objects) is followed by returning the
/// heap's free memory to the kernel.
const LARGE_ANSWER_BYTES: usize = 1 << 20;

/// How long a connection thread waits in one read before re-checking for shutdown.
const READ_TICK: Duration = Duration::from_millis(200);

fn serve_connection(mut stream: UnixStream, dispatch: &Dispatch, stopping: &AtomicBool, idle: Option<Duration>) {
    let _ = stream.set_read_timeout(Some(READ_TICK));
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    // When the connection last received bytes or finished a call.
    let mut active_at = Instant::now();
    loop {
        while let Some(frame) = framer.next_frame() {
            match frame {
                Frame::Fatal(e) => {
                    let _ = stream.write_all(encode(&response(None, Err(e))).as_bytes());
                    return;
                }
                Frame::Value(v) => {
                    let out = handle_frame(&v, dispatch);
                    active_at = Instant::now();
                    if let Some(out) = out {
                        let large = out.len() >= LARGE_ANSWER_BYTES;
                        let sent = stream.write_all(out.as_bytes());
                        if large {
                            // The answer and the value tree it came from were a burst of small
                            // allocations, now free: hand that memory back (see
                            // keel_reactor::release_free_heap).
                            drop(out);
                            keel_reactor::release_free_heap();
                        }
                        if sent.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        if idle.is_some_and(|t| active_at.elapsed() >= t) {
            tracing::debug!(
                pending_bytes = framer.pending(),
                "closing an idle RPC connection (it holds no request)"
            );
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return, // peer closed (half-close included: nothing more will come)
            Ok(n) => {
                framer.push(&buf[..n]);
                active_at = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// Runs one request synchronously through `dispatch`; `None` for a successful notification.
/// `raw_id` is the id's wire text (echoed verbatim when numeric).
fn call(req: Request, raw_id: Option<&str>, dispatch: &Dispatch) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    let id = id_text(req.id.as_ref(), raw_id);
    let notification = req.id.is_none();
    dispatch(req, Box::new(move |r| drop(tx.send(r))));
    let result = rx.recv().unwrap_or_else(|_| {
        Err(RpcError::new(
            INTERNAL_ERROR,
            "Internal error: handler dropped the call",
        ))
    });
    if notification && result.is_ok() {
        return None;
    }
    Some(response_text(&id, result))
}

/// The response text (no newline) for one request object, if any.
fn handle_one(raw: &RawValue, dispatch: &Dispatch) -> Option<String> {
    let v: Value = match serde_json::from_str(raw.get()) {
        Ok(v) => v,
        Err(_) => {
            return Some(response_text(
                "null",
                Err(RpcError::new(INVALID_REQUEST, "Invalid request")),
            ))
        }
    };
    let raw_id = raw_id(raw);
    match parse_request(v) {
        Ok(req) => call(req, raw_id, dispatch),
        Err((id, e)) => Some(response_text(&id_text(id.as_ref(), raw_id), Err(e))),
    }
}

/// The text to send for one top-level value (single request or batch), if any.
pub fn handle_frame(raw: &RawValue, dispatch: &Dispatch) -> Option<String> {
    let text = raw.get();
    if text.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).unwrap_or_default();
        if items.is_empty() {
            return Some(encode(&response(
                None,
                Err(RpcError::new(INVALID_REQUEST, "Invalid request")),
            )));
        }
        let out: Vec<String> = items
            .into_iter()
            .filter_map(|item| handle_one(item, dispatch))
            .collect();
        (!out.is_empty()).then(|| format!("[{}]\n", out.join(",")))
    } else {
        handle_one(raw, dispatch).map(|mut s| {
            s.push('\n');
            s
        })
    }
}

/// Feeds `data` through everything the server does with untrusted bytes — framing (split into
/// two reads at a point chosen by the first byte), envelope validation, batch handling, response
/// encoding — with a dispatcher that answers every method with its params. Checks the outputs'
/// invariants (ASCII, one JSON value each, newline-terminated) and panics if one breaks. The
/// fuzz target and the corpus test call this.
pub fn fuzz_one(data: &[u8]) {
    let dispatch: Dispatch = Arc::new(|req: Request, reply| {
        if req.method == "fail" {
            reply(Err(RpcError::new(-22, "Invalid argument")))
        } else {
            reply(Ok(req.params.unwrap_or(Value::Bool(true))))
        }
    });
    let split = data.first().map(|b| *b as usize % (data.len() + 1)).unwrap_or(0);
    let mut f = Framer::default();
    for part in [&data[..split], &data[split..]] {
        f.push(part);
        while let Some(frame) = f.next_frame() {
            let out = match frame {
                Frame::Fatal(e) => Some(encode(&response(None, Err(e)))),
                Frame::Value(v) => handle_frame(&v, &dispatch),
            };
            if let Some(text) = out {
                assert!(text.is_ascii(), "non-ASCII response");
                assert!(text.ends_with('\n'));
                let v: Value = serde_json::from_str(text.trim_end()).expect("response is one JSON value");
                assert!(v.is_object() || v.is_array());
            }
        }
    }
}
