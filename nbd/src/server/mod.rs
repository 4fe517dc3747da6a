//! The NBD server of keel-tgt: listeners, exports and connections over the bdev layer.
//!
//! # Design
//!
//! The server is a bdev module ([`NbdServer`], one per [`BdevRegistry`], reached with
//! [`NbdServer::of`]) whose save_config subsystem is `"nbd"` (after `"bdev"`, as SPDK lists
//! it). Its state — listeners, exports, the connection records — is control-path data behind
//! one mutex, changed on the main core by the RPC methods; the data path never takes it.
//!
//! * An **export** (`exports.rs`) opens its bdev (read-only for a read-only export) and *holds*
//!   it ([`keel_bdev::Descriptor::hold`]): the bdev modules' delete methods then refuse with
//!   EBUSY naming the export until it is removed, and a claim (md, dm, passthru) cannot take a
//!   bdev exported writable. Removing an export with connections is refused (EBUSY) unless
//!   forced; forced, its connections stop reading, finish and answer what is in flight, and
//!   close; the removal completes (and the hold goes) when the last one has closed. Hot removal
//!   of the bdev does the same by itself: in-flight requests fail with `ESHUTDOWN` and the
//!   connections close.
//! * A **listener** ([`listen`]) is a bound non-blocking socket polled on the main reactor (every
//!   millisecond: see `ACCEPT_PERIOD_US`). Each
//!   connection it accepts goes by message to the next reactor in round-robin order and lives
//!   there, served by its own poller (`conn.rs`): no thread per connection, no lock and no
//!   allocation per request. Stopping a listener closes it and ends the connections it
//!   accepted the same gentle way.
//! * A **connection** may also be started directly in transmission over a stream someone
//!   hands in ([`NbdServer::serve_transmission`]): the kernel client attached through a
//!   socketpair sends no handshake and takes only simple replies.
//! * A **kernel disk** (`disk.rs`, SPDK's `nbd_start_disk`) is such a connection with an export
//!   of its own that nobody else sees, attached to a kernel `/dev/nbdX` over a socketpair; its
//!   essay tells the ioctl sequence and the one thread the kernel demands (`NBD_DO_IT`).
//!
//! # Multi-conn
//!
//! Every export advertises `CAN_MULTI_CONN`, whose promise is that the reply to a FLUSH (or to a
//! FUA write) on any connection covers every write already replied to on any connection. It
//! holds because the server has no cache of its own: a WRITE is replied to only after the bdev
//! completed it, and every connection to an export submits to the same bdev (each through its
//! own core's channel of it). A FLUSH goes to that bdev as a whole-device flush, and every Keel
//! bdev's flush covers all writes it completed before, whatever core or channel they came
//! through: malloc and null have no volatile cache (a completed write is as durable as they
//! make anything, and a FLUSH on a bdev without flush support is answered at once), a uring
//! bdev flushes the file (`fsync` covers every completed write to it), and the layers (md, dm,
//! passthru, delay, error) forward a flush to every bdev below them after those completed the
//! writes. FUA is a flush after the write, before the reply.
//!
//! # Threads
//!
//! Control methods run on the main core (`start_listener` and `stop_listener` also from any
//! thread); connections on their reactors. The module's [`BdevModule::fini`] stops listeners
//! and connections and reports done once every connection has closed.

pub(crate) mod conn;
mod disk;
pub(crate) mod exports;
pub mod listen;
pub mod sock;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use keel_bdev::{BdevModule, BdevRegistry, ConfigCall, ConfigEntry, ModuleDone, Subsystem};
use keel_reactor::{current, try_current, CoreId, Cores, PollStatus, PollerHandle};
use serde_json::json;

use crate::error::NbdError;
use crate::export::check_string;
use crate::handshake::{Entry, Session};
use crate::server::conn::{ConnShared, Start};
use crate::server::exports::{Catalog, Export};
use crate::server::listen::{ListenAddr, ListenSock};
use crate::server::sock::Stream;

pub use disk::DiskStatus;

/// The module name (and its save_config subsystem's name).
pub const MODULE: &str = "nbd";

/// The `"nbd"` save_config subsystem: configured after the bdevs it exports.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "nbd",
    depends_on: &["bdev"],
};

/// Tunables of the server. `Default` is what keel-tgt uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// A client that has not finished the negotiation this long after connecting is dropped;
    /// also how long a stopping connection keeps trying to send its last replies to a client
    /// that does not read them.
    pub handshake_timeout_us: u64,
    /// Requests in flight per connection (slots): 128, the kernel client's queue depth.
    pub max_inflight: usize,
    /// Bytes of data buffers a connection may hold at once (reads waiting to be sent, writes
    /// being received or written): twice the 32 MiB maximum payload.
    pub max_inflight_bytes: u64,
    /// Connections accepted per listener and main-reactor turn.
    pub accepts_per_turn: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_us: 10_000_000,
            max_inflight: 128,
            max_inflight_bytes: 64 << 20,
            accepts_per_turn: 16,
        }
    }
}

/// `nbd_server_add_export` parameters.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExportOpts {
    /// The bdev to export.
    pub bdev_name: String,
    /// The export name (default: the bdev's name).
    pub name: Option<String>,
    /// Shown by `LIST` and `INFO` (default: empty).
    pub description: Option<String>,
    /// Refuse writes, trims and zeroes (EPERM); the bdev is opened read-only.
    pub read_only: bool,
}

/// One export as `nbd_server_get_exports` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportStatus {
    /// The export's name.
    pub name: String,
    /// Its bdev.
    pub bdev_name: String,
    /// Its description.
    pub description: String,
    /// Whether it is read-only.
    pub read_only: bool,
    /// The connections in transmission on it.
    pub connections: Vec<ConnStatus>,
}

/// One connection as `nbd_server_get_exports` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnStatus {
    /// Unique per server.
    pub id: u64,
    /// `IP:PORT` of the client, or `unix`.
    pub peer: String,
    /// The reactor serving it.
    pub core: u32,
}

/// A listener: its address and socket (taken out when it stops).
struct ListenerRec {
    id: u64,
    addr: ListenAddr,
    sock: Mutex<Option<ListenSock>>,
}

/// A removal waiting for the last connection of its export.
struct Waiter {
    export: Arc<Export>,
    done: Box<dyn FnOnce(Result<(), NbdError>) + Send>,
}

#[derive(Default)]
struct State {
    listeners: Vec<Arc<ListenerRec>>,
    exports: Vec<Arc<Export>>,
    catalog: Option<Arc<Catalog>>,
    conns: Vec<Arc<ConnShared>>,
    /// Kernel disks, in start order (`disk.rs`); their connections are in `conns` too.
    disks: Vec<disk::Disk>,
    waiters: Vec<Waiter>,
    /// The core the last connection went to.
    last_core: Option<CoreId>,
    /// fini: called when no connection and no disk is left.
    fini: Option<ModuleDone>,
}

impl State {
    fn catalog(&mut self) -> Arc<Catalog> {
        self.catalog
            .get_or_insert_with(|| Arc::new(Catalog::of(&self.exports)))
            .clone()
    }

    fn exports_changed(&mut self) {
        self.catalog = None;
    }

    fn conns_of(&self, export: &str) -> Vec<Arc<ConnShared>> {
        self.conns
            .iter()
            .filter(|c| c.export_name().as_deref() == Some(export))
            .cloned()
            .collect()
    }
}

/// The NBD server of one bdev registry (see the module essay).
pub struct NbdServer {
    me: Weak<NbdServer>,
    reg: Weak<BdevRegistry>,
    cores: Cores,
    config: Mutex<ServerConfig>,
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl BdevModule for NbdServer {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<Self> {
        let cores = reg.cores().clone();
        Arc::new_cyclic(|me| NbdServer {
            me: me.clone(),
            reg: Arc::downgrade(reg),
            cores,
            config: Mutex::new(ServerConfig::default()),
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
        })
    }

    fn name(&self) -> &'static str {
        MODULE
    }

    fn subsystem(&self) -> Subsystem {
        SUBSYSTEM
    }

    /// Stops every listener and kernel disk, ends every connection and reports done once the
    /// last connection closed and the last disk was cleared.
    fn fini(&self, done: ModuleDone) {
        let mut st = self.lock();
        for l in st.listeners.drain(..) {
            drop(l.sock.lock().unwrap_or_else(|e| e.into_inner()).take());
        }
        for e in st.exports.drain(..) {
            e.set_gone();
        }
        st.exports_changed();
        // Disk connections end through their disks' disconnect (the kernel is told first).
        let disk_conns: Vec<u64> = st.disks.iter().map(|d| d.conn_id()).collect();
        for c in st.conns.iter().filter(|c| !disk_conns.contains(&c.id)) {
            c.request_stop();
        }
        if st.conns.is_empty() && st.disks.is_empty() {
            drop(st);
            done.done();
        } else {
            st.fini = Some(done);
            drop(st);
            self.stop_all_disks();
        }
    }

    /// `nbd_server_start` for every listener, then `nbd_server_add_export` for every export
    /// and `nbd_start_disk` for every kernel disk (each needing its bdev), in the order they
    /// were made.
    fn config(&self, _reg: &BdevRegistry) -> Vec<ConfigEntry> {
        let st = self.lock();
        let mut out: Vec<ConfigEntry> = st
            .listeners
            .iter()
            .map(|l| {
                ConfigEntry::new(ConfigCall {
                    method: "nbd_server_start",
                    params: json!({ "listen": l.addr.text() }),
                })
            })
            .collect();
        for e in &st.exports {
            out.push(
                ConfigEntry::new(ConfigCall {
                    method: "nbd_server_add_export",
                    params: json!({
                        "bdev_name": e.bdev_name,
                        "name": e.name(),
                        "description": e.info.description(),
                        "read_only": e.info.read_only(),
                    }),
                })
                .needs([e.bdev_name.clone()]),
            );
        }
        for d in st.disks.iter().filter(|d| d.is_saved()) {
            let d = d.status();
            out.push(
                ConfigEntry::new(ConfigCall {
                    method: "nbd_start_disk",
                    params: json!({ "bdev_name": d.bdev_name, "nbd_device": d.nbd_device }),
                })
                .needs([d.bdev_name]),
            );
        }
        out
    }
}

impl NbdServer {
    /// The server of `reg` (created on first use). Any thread.
    pub fn of(reg: &Arc<BdevRegistry>) -> Arc<NbdServer> {
        reg.module::<NbdServer>()
    }

    /// The current tunables.
    pub fn config(&self) -> ServerConfig {
        *self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the tunables for connections made from now on (tests shorten the timeouts).
    pub fn set_config(&self, config: ServerConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub(crate) fn cores(&self) -> &Cores {
        &self.cores
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn me(&self) -> Arc<NbdServer> {
        self.me.upgrade().expect("the server is alive while called")
    }

    // ---- listeners -----------------------------------------------------------------------------

    /// `nbd_server_start`: listens on `listen` (`HOST:PORT`, `HOST`, or `unix:/path`) and
    /// returns the address as bound (`IP:PORT` with the real port when 0 was asked, or
    /// `unix:/path`). The accept poller starts on the main reactor (by message when called
    /// elsewhere). Control path.
    pub fn start_listener(&self, listen: &str) -> Result<String, NbdError> {
        let addr = ListenAddr::parse(listen)?;
        {
            let st = self.lock();
            if let Some(l) = st.listeners.iter().find(|l| l.addr == addr) {
                return Err(NbdError::Exists(format!("already listening on {}", l.addr.text())));
            }
        }
        let (sock, bound) = ListenSock::bind(&addr)?;
        let rec = Arc::new(ListenerRec {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            addr: bound.clone(),
            sock: Mutex::new(Some(sock)),
        });
        self.lock().listeners.push(rec.clone());
        let me = self.me.clone();
        let main = self.cores.main_core();
        let start = move || accept_poller(me, rec);
        if try_current().is_some_and(|r| r.core() == main) {
            start();
        } else if let Err(e) = self.cores.run_on(main, start) {
            return Err(NbdError::Busy(format!("cannot reach the main reactor: {e}")));
        }
        tracing::info!(listen = %bound.text(), "nbd: listening");
        Ok(bound.text())
    }

    /// `nbd_server_stop`: closes the listener on `listen` (as given to `nbd_server_start` or as
    /// it returned) and ends the connections it accepted (in-flight requests finish first).
    /// Control path.
    pub fn stop_listener(&self, listen: &str) -> Result<(), NbdError> {
        let wanted = ListenAddr::parse(listen)?;
        let mut st = self.lock();
        let pos = st
            .listeners
            .iter()
            .position(|l| l.addr == wanted)
            .ok_or_else(|| NbdError::NotFound(format!("not listening on {}", wanted.text())))?;
        let l = st.listeners.remove(pos);
        drop(l.sock.lock().unwrap_or_else(|e| e.into_inner()).take());
        for c in st.conns.iter().filter(|c| c.listener == Some(l.id)) {
            c.request_stop();
        }
        tracing::info!(listen = %l.addr.text(), "nbd: stopped listening");
        Ok(())
    }

    /// The listening addresses, in start order.
    pub fn listeners(&self) -> Vec<String> {
        self.lock().listeners.iter().map(|l| l.addr.text()).collect()
    }

    /// Hands a freshly accepted stream to the next reactor (round robin). Main core.
    fn accepted(&self, listener: u64, stream: Stream) {
        if let Err(e) = stream.prepare() {
            tracing::debug!(error = %e, "nbd: cannot prepare an accepted socket");
            return;
        }
        let mut st = self.lock();
        let core = match st.last_core {
            Some(c) => self.cores.next_core(c),
            None => self.cores.main_core(),
        };
        st.last_core = Some(core);
        let shared = Arc::new(ConnShared::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            stream.peer(),
            core,
            Some(listener),
        ));
        st.conns.push(shared.clone());
        let catalog = st.catalog();
        drop(st);
        tracing::debug!(peer = %shared.peer, core = core.0, "nbd: connection accepted");
        if let Err(e) = self.spawn_on(core, shared, stream, Start::Handshake(catalog)) {
            tracing::warn!(error = %e, "nbd: cannot hand a connection to its reactor");
        }
    }

    // ---- exports -------------------------------------------------------------------------------

    /// `nbd_server_add_export`: opens `bdev_name` (read-only if asked), holds it, and exports it
    /// under `name` (default: the bdev's name); returns the export's name. Control path, main
    /// core (bdev removal events for the export arrive there).
    pub fn add_export(&self, opts: &ExportOpts) -> Result<String, NbdError> {
        let name = opts.name.clone().unwrap_or_else(|| opts.bdev_name.clone());
        let description = opts.description.clone().unwrap_or_default();
        check_string(&name).map_err(|e| NbdError::invalid("name", e.to_string()))?;
        check_string(&description).map_err(|e| NbdError::invalid("description", e.to_string()))?;
        let reg = self
            .reg
            .upgrade()
            .ok_or_else(|| NbdError::NotFound("the bdev registry is gone".into()))?;
        if self.lock().exports.iter().any(|e| e.name() == name) {
            return Err(NbdError::Exists(format!("export '{name}' already exists")));
        }
        let me = self.me.clone();
        let ev_name = name.clone();
        let desc = reg
            .open(&opts.bdev_name, !opts.read_only, move |_event| {
                if let Some(me) = me.upgrade() {
                    me.bdev_removed(&ev_name);
                }
            })
            .map_err(|e| match e {
                keel_bdev::BdevError::NotFound(_) => NbdError::NotFound(format!("bdev '{}' not found", opts.bdev_name)),
                keel_bdev::BdevError::Claimed { .. } => NbdError::Busy(e.to_string()),
                other => other.into(),
            })?;
        let holder = format!("nbd export '{name}'");
        let export = Arc::new(Export::new(name.clone(), description, opts.read_only, desc, holder)?);
        let mut st = self.lock();
        if st.exports.iter().any(|e| e.name() == name) {
            return Err(NbdError::Exists(format!("export '{name}' already exists")));
        }
        st.exports.push(export);
        st.exports_changed();
        tracing::info!(export = %name, bdev = %opts.bdev_name, read_only = opts.read_only, "nbd: export added");
        Ok(name)
    }

    /// `nbd_server_remove_export`: refused (EBUSY) while connections serve it unless `force`;
    /// with `force` they stop reading, finish what is in flight, send its replies and close.
    /// `done` runs (on the main core, or at once) when the last has closed and the bdev is
    /// released. Control path.
    pub fn remove_export(&self, name: &str, force: bool, done: impl FnOnce(Result<(), NbdError>) + Send + 'static) {
        let mut st = self.lock();
        let Some(pos) = st.exports.iter().position(|e| e.name() == name) else {
            drop(st);
            return done(Err(NbdError::NotFound(format!("export '{name}' not found"))));
        };
        let conns = st.conns_of(name);
        if !conns.is_empty() && !force {
            let peers: Vec<&str> = conns.iter().map(|c| c.peer.as_str()).collect();
            drop(st);
            return done(Err(NbdError::Busy(format!(
                "export '{name}' has {} connection(s) ({}); disconnect them or use force",
                conns.len(),
                peers.join(", ")
            ))));
        }
        let export = st.exports.remove(pos);
        export.set_gone();
        st.exports_changed();
        for c in &conns {
            c.request_stop();
        }
        if conns.is_empty() {
            drop(st);
            export.release();
            tracing::info!(export = name, "nbd: export removed");
            return done(Ok(()));
        }
        st.waiters.push(Waiter {
            export,
            done: Box::new(done),
        });
    }

    /// The export's bdev is being hot-removed: as a forced removal. Main core (the descriptor's
    /// event).
    fn bdev_removed(&self, name: &str) {
        tracing::info!(
            export = name,
            "nbd: the exported bdev is being removed; removing the export"
        );
        self.remove_export(name, true, |_| {});
    }

    /// Every export with its connections, in the order they were added.
    pub fn exports(&self) -> Vec<ExportStatus> {
        let st = self.lock();
        st.exports
            .iter()
            .map(|e| ExportStatus {
                name: e.name().to_string(),
                bdev_name: e.bdev_name.clone(),
                description: e.info.description().to_string(),
                read_only: e.info.read_only(),
                connections: st
                    .conns_of(e.name())
                    .iter()
                    .map(|c| ConnStatus {
                        id: c.id,
                        peer: c.peer.clone(),
                        core: c.core.0,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Serves `stream` like a listener's connection — negotiation first — on `core`, showing
    /// `peer` in `get_exports` (an in-process client over a socketpair; tests). Returns its id.
    /// Control path.
    pub fn serve(&self, stream: Stream, peer: &str, core: CoreId) -> Result<u64, NbdError> {
        stream
            .prepare()
            .map_err(|e| NbdError::os("cannot prepare the socket", &e))?;
        let mut st = self.lock();
        let shared = Arc::new(ConnShared::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            peer.to_string(),
            core,
            None,
        ));
        st.conns.push(shared.clone());
        let catalog = st.catalog();
        drop(st);
        self.spawn_on(core, shared, stream, Start::Handshake(catalog))
    }

    /// Sends a new connection to its core.
    fn spawn_on(&self, core: CoreId, shared: Arc<ConnShared>, stream: Stream, start: Start) -> Result<u64, NbdError> {
        let id = shared.id;
        let me = self.me();
        let s2 = shared.clone();
        if let Err(e) = self.cores.run_on(core, move || conn::spawn(me, s2, stream, start)) {
            self.conn_closed(&shared);
            return Err(NbdError::Busy(format!("cannot reach core {}: {e}", core.0)));
        }
        Ok(id)
    }

    /// Serves `stream` directly in transmission on export `name`, with simple replies and no
    /// negotiation (the kernel client over a socketpair; also tests). The connection lives on
    /// `core`, shows `peer` in `get_exports` and ends like any other (its export's removal, EOF,
    /// `DISC`). Returns its id. Control path.
    pub fn serve_transmission(&self, stream: Stream, name: &str, peer: &str, core: CoreId) -> Result<u64, NbdError> {
        stream
            .prepare()
            .map_err(|e| NbdError::os("cannot prepare the socket", &e))?;
        let mut st = self.lock();
        let export = st
            .exports
            .iter()
            .find(|e| e.name() == name)
            .cloned()
            .ok_or_else(|| NbdError::NotFound(format!("export '{name}' not found")))?;
        let shared = Arc::new(ConnShared::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            peer.to_string(),
            core,
            None,
        ));
        *shared.export.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.to_string());
        st.conns.push(shared.clone());
        drop(st);
        let session = kernel_session(&export);
        self.spawn_on(core, shared, stream, Start::Transmission(export, session))
    }

    // ---- connection bookkeeping (called by connections on their cores) -------------------------

    /// A connection finished its negotiation on `export`: records it, unless the export's
    /// removal started (then the connection must close).
    pub(crate) fn attach(&self, conn: &ConnShared, export: &Export) -> bool {
        let _st = self.lock();
        if export.is_gone() {
            return false;
        }
        *conn.export.lock().unwrap_or_else(|e| e.into_inner()) = Some(export.name().to_string());
        true
    }

    /// A connection closed (its channel and buffers are dropped): forgets it and completes the
    /// removals and the fini that waited for it (on the main core).
    pub(crate) fn conn_closed(&self, conn: &ConnShared) {
        let mut st = self.lock();
        st.conns.retain(|c| c.id != conn.id);
        let mut ready = Vec::new();
        let mut i = 0;
        while i < st.waiters.len() {
            if st.conns_of(st.waiters[i].export.name()).is_empty() {
                ready.push(st.waiters.remove(i));
            } else {
                i += 1;
            }
        }
        let fini = if st.conns.is_empty() && st.disks.is_empty() {
            st.fini.take()
        } else {
            None
        };
        drop(st);
        tracing::debug!(conn = conn.id, peer = %conn.peer, "nbd: connection closed");
        let (me, conn_id) = (self.me(), conn.id);
        let finish = move || {
            me.disk_conn_closed(conn_id);
            for w in ready {
                w.export.release();
                tracing::info!(export = w.export.name(), "nbd: export removed");
                (w.done)(Ok(()));
            }
            if let Some(f) = fini {
                f.done();
            }
        };
        let main = self.cores.main_core();
        if try_current().is_some_and(|r| r.core() == main) {
            finish();
        } else if let Err(e) = self.cores.run_on(main, finish) {
            tracing::warn!(error = %e, "nbd: cannot reach the main reactor to finish a removal");
        }
    }
}

/// The session of a connection that starts in transmission for the kernel client: simple
/// replies, no meta context, the export's flags as the negotiation would give them.
pub(crate) fn kernel_session(export: &Export) -> Session {
    let info = &export.info;
    Session {
        export_name: export.name().to_string(),
        size_bytes: info.size_bytes(),
        transmission_flags: info.transmission_flags(false),
        structured_replies: false,
        extended_headers: false,
        base_allocation: None,
        block_sizes: info.block_sizes(),
        block_sizes_acknowledged: false,
        check_alignment: true,
        entry: Entry::ExportName,
    }
}

/// How often a listener is polled for new connections. `accept4` on a non-blocking socket
/// allocates (and frees) a socket inode even when nothing is waiting — a few microseconds that
/// an every-turn poller would take from the connections on the main reactor — while a client
/// waiting a millisecond longer to be accepted does not notice.
const ACCEPT_PERIOD_US: u64 = 1000;

/// Registers the accept poller of `rec` on the calling (main) reactor, a timed poller
/// ([`ACCEPT_PERIOD_US`]). It accepts up to [`ServerConfig::accepts_per_turn`] connections per
/// run and unregisters once the listener stopped or the reactor shuts down.
fn accept_poller(server: Weak<NbdServer>, rec: Arc<ListenerRec>) {
    let handle_slot: Rc<RefCell<Option<PollerHandle>>> = Rc::new(RefCell::new(None));
    let h2 = handle_slot.clone();
    let name = format!("nbd_listen_{}", rec.id);
    let handle = current().register_timed_poller(name, ACCEPT_PERIOD_US, move || {
        let Some(server) = server.upgrade() else {
            drop(h2.borrow_mut().take());
            return PollStatus::Idle;
        };
        let mut guard = rec.sock.lock().unwrap_or_else(|e| e.into_inner());
        if server.cores.is_stopping() {
            drop(guard.take());
        }
        let Some(sock) = guard.as_ref() else {
            drop(guard);
            drop(h2.borrow_mut().take());
            return PollStatus::Idle;
        };
        let mut got = Vec::new();
        for _ in 0..server.config().accepts_per_turn {
            match sock.accept() {
                Ok(Some(s)) => got.push(s),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, listen = %rec.addr.text(), "nbd: accept failed");
                    break;
                }
            }
        }
        drop(guard);
        let busy = !got.is_empty();
        for s in got {
            server.accepted(rec.id, s);
        }
        PollStatus::from_work(busy)
    });
    *handle_slot.borrow_mut() = Some(handle);
}
