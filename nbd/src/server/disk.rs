//! Kernel disks: a bdev served to the kernel's own NBD client as `/dev/nbdX` through a
//! socketpair — SPDK's `nbd_start_disk` / `nbd_stop_disk` / `nbd_get_disks`
//! (`shared/specs/nbd-ublk.md` Part B).
//!
//! # Design
//!
//! A disk is an [`Export`] that nobody can see — not in the catalog, not listed, not saved as an
//! export — holding its bdev like any export, and one connection that starts directly in
//! transmission (the kernel sends no handshake and takes simple replies only) on the server end
//! of a socketpair. The data path is the server's own (`conn.rs`): polled on one reactor (round
//! robin, like a listener's connections), no thread and no allocation per request. The kernel
//! end is handed to the device with the set-up ioctls, made on the main reactor (each returns
//! at once), in SPDK's order: `NBD_SET_SOCK` first — it refuses (`EBUSY`) a device another task
//! is setting up or running, before anything of it was touched — then `NBD_SET_BLKSIZE` (the
//! bdev's block size), `NBD_SET_SIZE_BLOCKS`, `NBD_SET_TIMEOUT(60)` and `NBD_SET_FLAGS` (the
//! flags a network client of the same export would get: FLUSH, FUA, TRIM, WRITE_ZEROES...).
//!
//! The kernel demands one thing Keel otherwise never does: `NBD_DO_IT` blocks its caller for as
//! long as the device runs. So each disk has one thread made only for that call, as SPDK does:
//! it calls `NBD_DO_IT`, and when that returns — a requested disconnect, the connection ending,
//! the kernel's timeout — it clears the device (`NBD_CLEAR_QUE`, `NBD_CLEAR_SOCK`) and tells the
//! main reactor. `NBD_DISCONNECT` may wait for room in the socket, so it runs on a short-lived
//! helper thread (SPDK's `nbd_disconnect` thread). No thread other than the reactors touches a
//! request. The ioctls themselves are the crate's only `unsafe` code (`disk/ioctl.rs`).
//!
//! A disk's life is a state machine ([`Phase`], one [`Disk::apply`] step per [`Event`], the
//! step saying what to do as [`Effects`]) kept in the server's state and stepped on the main
//! reactor:
//!
//! ```text
//! start ─► Starting ──Up──► Running ──Stop──► Stopping{conn, kernel} ──both ended──► gone
//!             │                 │                  ▲
//!             │                 └─ either side ────┤ (kernel timeout, nbd-client -d, socket)
//!             └─ not up in 10 s, DO_IT failed ─────┘
//! ```
//!
//! Stop (`nbd_stop_disk`, hot removal of the bdev, the module's fini) sends `NBD_DISCONNECT`:
//! the kernel sends `DISC`, the connection finishes what is in flight, answers it and closes its
//! end; the kernel sees the end of the stream and `NBD_DO_IT` returns. The disk is gone when
//! both sides are: the connection closed (its channel dropped on its core) *and* the thread
//! cleared the device. Only then is the bdev released and `nbd_stop_disk` answered, so the
//! device is free for the next `nbd_start_disk` the moment the answer arrives.
//!
//! `nbd_start_disk` is answered once the kernel shows the device running — its `pid` attribute
//! and its size in sysfs, looked at every 10 ms by a timed poller on the main reactor — so a
//! script can use `/dev/nbdX` as soon as it has the answer.
//!
//! Without a device named, the first `/dev/nbdN` (in `/sys/block` order) that is not a disk of
//! this server and has no `/sys/block/nbdN/pid` (no other process runs it) is taken; `EBUSY`
//! from `NBD_SET_SOCK` (another process got there first) moves on to the next one.

mod ioctl;

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use keel_reactor::{current, try_current, PollStatus, PollerHandle};

use crate::error::NbdError;
use crate::server::conn::{ConnShared, Start};
use crate::server::exports::Export;
use crate::server::sock::Stream;
use crate::server::{kernel_session, NbdServer};

/// How long `nbd_start_disk` waits for the kernel to show the device running.
const START_TIMEOUT_US: u64 = 10_000_000;
/// How often the main reactor looks at sysfs while a disk starts.
const START_POLL_US: u64 = 10_000;
/// `NBD_SET_TIMEOUT`: SPDK's value. A request the kernel has waited this long for ends the
/// connection; Keel answers in microseconds, so only a stuck target trips it.
const KERNEL_TIMEOUT_SECS: u64 = 60;

/// One disk as `nbd_get_disks` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStatus {
    /// The device, `/dev/nbdN`.
    pub nbd_device: String,
    /// The bdev behind it.
    pub bdev_name: String,
}

/// Where a disk is in its life (see the module essay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The device is set up and `NBD_DO_IT` issued; waiting for sysfs to show it. `stop_asked`:
    /// a stop came meanwhile (it runs once the start is answered).
    Starting { stop_asked: bool },
    /// Serving.
    Running,
    /// Ending: waiting for the connection to close and for the kernel side to be cleared.
    Stopping { conn_closed: bool, kernel_done: bool },
}

/// What happens to a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// sysfs shows the device running.
    Up,
    /// It did not come up in time.
    NotUp,
    /// Stop it (RPC, hot removal, fini).
    Stop,
    /// `NBD_DISCONNECT` failed (the kernel side is not running any more).
    DisconnectFailed,
    /// The server's connection closed.
    ConnClosed,
    /// `NBD_DO_IT` returned (`Err`: why the connection ended) and the device was cleared.
    KernelDone(Result<(), String>),
}

/// What a step asks the server to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// Answer `nbd_start_disk`: `Ok`, or why the device could not start.
    pub started: Option<Result<(), String>>,
    /// Send `NBD_DISCONNECT` (on a helper thread).
    pub disconnect: bool,
    /// Ask the connection to finish what is in flight and close.
    pub stop_conn: bool,
    /// Both sides ended: release the bdev, forget the disk, answer who waited for the stop.
    pub finished: bool,
}

impl Phase {
    /// The one step of the state machine: the phase after `ev`, and what to do.
    pub(crate) fn apply(self, ev: Event) -> (Phase, Effects) {
        use Event as E;
        use Phase as P;
        let mut fx = Effects::default();
        let stopping = |conn_closed, kernel_done| P::Stopping {
            conn_closed,
            kernel_done,
        };
        let next = match (self, ev) {
            (P::Starting { stop_asked }, E::Up) => {
                fx.started = Some(Ok(()));
                if stop_asked {
                    fx.disconnect = true;
                    stopping(false, false)
                } else {
                    P::Running
                }
            }
            (P::Starting { .. }, E::NotUp) => {
                fx.started = Some(Err("the kernel did not bring the device up in time".into()));
                fx.disconnect = true;
                fx.stop_conn = true;
                stopping(false, false)
            }
            (P::Starting { .. }, E::Stop) => P::Starting { stop_asked: true },
            (P::Starting { .. }, E::KernelDone(r)) => {
                let why = r.err().unwrap_or_else(|| "disconnected while starting".into());
                fx.started = Some(Err(format!("NBD_DO_IT ended: {why}")));
                fx.stop_conn = true;
                stopping(false, true)
            }
            (P::Starting { .. }, E::ConnClosed) => {
                fx.started = Some(Err("the connection closed while starting".into()));
                fx.disconnect = true;
                stopping(true, false)
            }
            (P::Running, E::Stop) => {
                fx.disconnect = true;
                stopping(false, false)
            }
            (P::Running, E::KernelDone(_)) => {
                fx.stop_conn = true;
                stopping(false, true)
            }
            (P::Running, E::ConnClosed) => {
                fx.disconnect = true;
                stopping(true, false)
            }
            (
                P::Stopping {
                    conn_closed,
                    kernel_done,
                },
                ev,
            ) => {
                let (c, k) = match ev {
                    E::ConnClosed => (true, kernel_done),
                    E::KernelDone(_) => (conn_closed, true),
                    E::DisconnectFailed => {
                        fx.stop_conn = true;
                        (conn_closed, kernel_done)
                    }
                    E::Up | E::NotUp | E::Stop => (conn_closed, kernel_done),
                };
                fx.finished = c && k;
                stopping(c, k)
            }
            // The disconnect is sent only when stopping; late sysfs news changes nothing.
            (p @ (P::Starting { .. } | P::Running), E::DisconnectFailed) => {
                fx.stop_conn = true;
                p
            }
            (P::Running, E::Up | E::NotUp) => P::Running,
        };
        (next, fx)
    }
}

type StartReply = Box<dyn FnOnce(Result<String, NbdError>) + Send>;
type StopDone = Box<dyn FnOnce(Result<(), NbdError>) + Send>;

/// One kernel disk (in the server's state; changed on the main core).
pub(crate) struct Disk {
    id: u64,
    /// `/dev/nbdN`.
    device: String,
    bdev_name: String,
    export: Arc<Export>,
    /// The device, shared with the `NBD_DO_IT` thread and the disconnect helper; closed when
    /// the last of them lets go.
    dev: Arc<File>,
    conn: Arc<ConnShared>,
    phase: Phase,
    start_reply: Option<StartReply>,
    stop_waiters: Vec<StopDone>,
}

impl Disk {
    /// Steps the state machine.
    fn apply(&mut self, ev: Event) -> Effects {
        let (next, fx) = self.phase.apply(ev);
        self.phase = next;
        fx
    }

    /// The connection serving it.
    pub(crate) fn conn_id(&self) -> u64 {
        self.conn.id
    }

    /// As `nbd_get_disks` shows it.
    pub(crate) fn status(&self) -> DiskStatus {
        DiskStatus {
            nbd_device: self.device.clone(),
            bdev_name: self.bdev_name.clone(),
        }
    }

    /// Whether save_config keeps it (not on its way out).
    pub(crate) fn is_saved(&self) -> bool {
        !matches!(self.phase, Phase::Stopping { .. })
    }
}

/// The index N of `/dev/nbdN`.
fn device_index(path: &str) -> Result<u32, NbdError> {
    path.strip_prefix("/dev/nbd")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| NbdError::invalid("nbd_device", format!("'{path}' is not /dev/nbdN")))
}

/// Whether the kernel shows `nbdN` running with `sectors` 512-byte sectors.
fn device_up(index: u32, sectors: u64) -> bool {
    let sys = format!("/sys/block/nbd{index}");
    Path::new(&format!("{sys}/pid")).exists()
        && std::fs::read_to_string(format!("{sys}/size")).is_ok_and(|s| s.trim().parse() == Ok(sectors))
}

/// Why attaching one device failed.
enum AttachError {
    /// Another task sets it up or runs it (`EBUSY`): try another.
    Busy,
    Other(NbdError),
}

/// Opens `/dev/nbd{index}` and hands it the kernel end of a new socketpair with the set-up
/// ioctls (module essay); returns the device and the server end. Main core.
fn attach(index: u32, block_size: u32, num_blocks: u64, flags: u16) -> Result<(File, UnixStream), AttachError> {
    let path = format!("/dev/nbd{index}");
    let os = |what: &str, e: std::io::Error| AttachError::Other(NbdError::os(format!("{what} {path}"), &e));
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| os("cannot open", e))?;
    let (server_end, kernel_end) = UnixStream::pair().map_err(|e| os("socketpair for", e))?;
    match ioctl::set_sock(&dev, kernel_end.as_fd()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(AttachError::Busy),
        Err(e) => return Err(os("NBD_SET_SOCK on", e)),
    }
    // The kernel holds its own reference to its end from here on.
    drop(kernel_end);
    let setup = || -> std::io::Result<()> {
        ioctl::set_blksize(&dev, block_size)?;
        ioctl::set_size_blocks(&dev, num_blocks)?;
        ioctl::set_timeout(&dev, KERNEL_TIMEOUT_SECS)?;
        ioctl::set_flags(&dev, flags)
    };
    if let Err(e) = setup() {
        let _ = ioctl::clear_sock(&dev);
        return Err(os("cannot set up", e));
    }
    Ok((dev, server_end))
}

impl NbdServer {
    /// `nbd_start_disk`: serves bdev `bdev_name` as the kernel's `/dev/nbdN` — `device` if
    /// given, else the first free one — and answers `reply` with the device's path once the
    /// kernel runs it (or with the error). The bdev is opened writable and held until the disk
    /// is stopped. Main core (the answer comes there too).
    pub fn start_disk(
        &self,
        bdev_name: &str,
        device: Option<&str>,
        reply: impl FnOnce(Result<String, NbdError>) + Send + 'static,
    ) {
        match self.begin_disk(bdev_name, device) {
            Ok((id, index, sectors)) => {
                self.lock()
                    .disks
                    .iter_mut()
                    .find(|d| d.id == id)
                    .expect("just added")
                    .start_reply = Some(Box::new(reply));
                self.watch_start(id, index, sectors);
            }
            Err(e) => reply(Err(e)),
        }
    }

    /// Everything of a start up to `NBD_DO_IT`: returns the disk's id, device index and size in
    /// sectors.
    fn begin_disk(&self, bdev_name: &str, device: Option<&str>) -> Result<(u64, u32, u64), NbdError> {
        let main = self.cores().main_core();
        if try_current().is_none_or(|r| r.core() != main) {
            return Err(NbdError::Busy("nbd_start_disk runs on the main reactor".into()));
        }
        let wanted = device.map(device_index).transpose()?;
        if let Some(path) = device {
            if self.lock().disks.iter().any(|d| d.device == path) {
                return Err(NbdError::Busy(format!("{path} is already a disk of this target")));
            }
        }
        let reg = self
            .reg
            .upgrade()
            .ok_or_else(|| NbdError::NotFound("the bdev registry is gone".into()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let me = self.me.clone();
        let desc = reg
            .open(bdev_name, true, move |_event| {
                if let Some(me) = me.upgrade() {
                    tracing::info!(disk = id, "nbd: the disk's bdev is being removed; stopping the disk");
                    me.disk_event(id, Event::Stop);
                }
            })
            .map_err(|e| match e {
                keel_bdev::BdevError::NotFound(_) => NbdError::NotFound(format!("bdev '{bdev_name}' not found")),
                keel_bdev::BdevError::Claimed { .. } => NbdError::Busy(e.to_string()),
                other => other.into(),
            })?;
        let info = desc.info().clone();
        if !(512..=4096).contains(&info.block_size) || !info.block_size.is_power_of_two() {
            return Err(NbdError::invalid(
                "bdev_name",
                format!(
                    "block size {} of '{bdev_name}': the kernel's nbd takes 512 to 4096",
                    info.block_size
                ),
            ));
        }
        let flags = Export::describe(bdev_name.to_string(), String::new(), false, &info)?.transmission_flags(false);
        // The device: the one asked for, or the first free one.
        let (index, dev, server_end) = match wanted {
            Some(i) => match attach(i, info.block_size, info.num_blocks, flags) {
                Ok((dev, s)) => (i, dev, s),
                Err(AttachError::Busy) => {
                    return Err(NbdError::Busy(format!("/dev/nbd{i} is in use by another process")))
                }
                Err(AttachError::Other(e)) => return Err(e),
            },
            None => {
                let ours: Vec<String> = self.lock().disks.iter().map(|d| d.device.clone()).collect();
                let mut found = None;
                for i in (0..).take_while(|i| Path::new(&format!("/sys/block/nbd{i}")).exists()) {
                    let path = format!("/dev/nbd{i}");
                    if ours.contains(&path) || Path::new(&format!("/sys/block/nbd{i}/pid")).exists() {
                        continue;
                    }
                    match attach(i, info.block_size, info.num_blocks, flags) {
                        Ok((dev, s)) => {
                            found = Some((i, dev, s));
                            break;
                        }
                        Err(AttachError::Busy) => continue,
                        Err(AttachError::Other(e)) => return Err(e),
                    }
                }
                found.ok_or_else(|| {
                    NbdError::NotFound("nbd device not found: no free /dev/nbdN (is the nbd module loaded?)".into())
                })?
            }
        };
        let device = format!("/dev/nbd{index}");
        let dev = Arc::new(dev);
        let holder = format!("nbd disk {device}");
        let export = match Export::new(device.clone(), String::new(), false, desc, holder) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                let _ = ioctl::clear_sock(&dev);
                return Err(e);
            }
        };
        let session = kernel_session(&export);
        // The server's end, on the next reactor.
        let (core, shared) = {
            let mut st = self.lock();
            let core = match st.last_core {
                Some(c) => self.cores().next_core(c),
                None => main,
            };
            st.last_core = Some(core);
            let shared = Arc::new(ConnShared::new(
                self.next_id.fetch_add(1, Ordering::Relaxed),
                format!("kernel {device}"),
                core,
                None,
            ));
            st.conns.push(shared.clone());
            (core, shared)
        };
        let stream = Stream::Unix(server_end);
        let served = match stream.prepare() {
            Ok(()) => self.spawn_on(
                core,
                shared.clone(),
                stream,
                Start::Transmission(export.clone(), session),
            ),
            Err(e) => {
                self.lock().conns.retain(|c| c.id != shared.id);
                Err(NbdError::os("cannot prepare the socket", &e))
            }
        };
        if let Err(e) = served {
            // The connection never ran (and is forgotten): clear the device, release the bdev.
            let _ = ioctl::clear_sock(&dev);
            export.release();
            return Err(e);
        }
        // From here on the connection runs; its close reaches the disk as `ConnClosed` (looked
        // up on this core, after this returns).
        self.lock().disks.push(Disk {
            id,
            device: device.clone(),
            bdev_name: info.name.clone(),
            export,
            dev: dev.clone(),
            conn: shared,
            phase: Phase::Starting { stop_asked: false },
            start_reply: None,
            stop_waiters: Vec::new(),
        });
        // The kernel side: NBD_DO_IT on a thread of its own.
        let me = self.me.clone();
        let cores = self.cores().clone();
        let thread_dev = dev.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd{index}-do-it"))
            .spawn(move || {
                let r = ioctl::do_it(&thread_dev).map_err(|e| e.to_string());
                let _ = ioctl::clear_que(&thread_dev);
                let _ = ioctl::clear_sock(&thread_dev);
                drop(thread_dev);
                tracing::debug!(device = index, result = ?r, "nbd: NBD_DO_IT returned; device cleared");
                let _ = cores.run_on(main, move || {
                    if let Some(me) = me.upgrade() {
                        me.disk_event(id, Event::KernelDone(r));
                    }
                });
            });
        if let Err(e) = spawned {
            let _ = ioctl::clear_sock(&dev);
            // The connection sees the end of its stream and closes; the disk goes with it.
            self.disk_event(
                id,
                Event::KernelDone(Err(format!("cannot start the NBD_DO_IT thread: {e}"))),
            );
            return Err(NbdError::os("cannot start the NBD_DO_IT thread", &e));
        }
        tracing::info!(device = %device, bdev = bdev_name, core = core.0, "nbd: disk starting");
        Ok((id, index, info.num_blocks * u64::from(info.block_size) / 512))
    }

    /// Registers the main-core timed poller that reports [`Event::Up`] (or [`Event::NotUp`]
    /// after [`START_TIMEOUT_US`]) for disk `id`.
    fn watch_start(&self, id: u64, index: u32, sectors: u64) {
        let me = self.me.clone();
        let slot: Rc<RefCell<Option<PollerHandle>>> = Rc::new(RefCell::new(None));
        let s2 = slot.clone();
        let polls_left = RefCell::new(START_TIMEOUT_US / START_POLL_US);
        let handle = current().register_timed_poller(format!("nbd{index}_start"), START_POLL_US, move || {
            let Some(me) = me.upgrade() else {
                drop(s2.borrow_mut().take());
                return PollStatus::Idle;
            };
            let starting = me
                .lock()
                .disks
                .iter()
                .any(|d| d.id == id && matches!(d.phase, Phase::Starting { .. }));
            let ev = if !starting {
                None
            } else if device_up(index, sectors) {
                Some(Event::Up)
            } else {
                let mut left = polls_left.borrow_mut();
                *left = left.saturating_sub(1);
                (*left == 0).then_some(Event::NotUp)
            };
            match ev {
                None if starting => PollStatus::Idle,
                ev => {
                    drop(s2.borrow_mut().take());
                    if let Some(ev) = ev {
                        me.disk_event(id, ev);
                    }
                    PollStatus::Busy
                }
            }
        });
        *slot.borrow_mut() = Some(handle);
    }

    /// `nbd_stop_disk`: stops the disk on `device` (module essay); `done` runs on the main core
    /// once the device is cleared and the bdev released. Unknown device: ENODEV "invalid nbd
    /// device", as SPDK. Main core.
    pub fn stop_disk(&self, device: &str, done: impl FnOnce(Result<(), NbdError>) + Send + 'static) {
        let id = {
            let mut st = self.lock();
            let Some(d) = st.disks.iter_mut().find(|d| d.device == device) else {
                drop(st);
                return done(Err(NbdError::NotFound("invalid nbd device".into())));
            };
            d.stop_waiters.push(Box::new(done));
            d.id
        };
        tracing::info!(device, "nbd: stopping disk");
        self.disk_event(id, Event::Stop);
    }

    /// Every disk, in start order (`nbd_get_disks`).
    pub fn disks(&self) -> Vec<DiskStatus> {
        self.lock().disks.iter().map(Disk::status).collect()
    }

    /// Steps disk `id` and carries out what the step asks. Main core.
    pub(crate) fn disk_event(&self, id: u64, ev: Event) {
        let mut st = self.lock();
        let Some(pos) = st.disks.iter().position(|d| d.id == id) else {
            return;
        };
        let disk = &mut st.disks[pos];
        let fx = disk.apply(ev);
        let start_reply = fx.started.as_ref().and_then(|_| disk.start_reply.take());
        let (device, dev, conn) = (disk.device.clone(), disk.dev.clone(), disk.conn.clone());
        let finished = fx.finished.then(|| st.disks.remove(pos));
        let fini = if finished.is_some() && st.conns.is_empty() && st.disks.is_empty() {
            st.fini.take()
        } else {
            None
        };
        drop(st);
        if let (Some(r), Some(reply)) = (fx.started, start_reply) {
            match r {
                Ok(()) => {
                    tracing::info!(device = %device, "nbd: disk running");
                    reply(Ok(device.clone()));
                }
                Err(why) => {
                    tracing::warn!(device = %device, why = %why, "nbd: disk did not start");
                    reply(Err(NbdError::Busy(format!("{device}: {why}"))));
                }
            }
        }
        if fx.stop_conn {
            conn.request_stop();
        }
        if fx.disconnect {
            let me = self.me.clone();
            let cores = self.cores().clone();
            let main = cores.main_core();
            let spawned = std::thread::Builder::new()
                .name("nbd-disconnect".into())
                .spawn(move || {
                    if let Err(e) = ioctl::disconnect(&dev) {
                        tracing::debug!(error = %e, "nbd: NBD_DISCONNECT failed; closing the connection instead");
                        let _ = cores.run_on(main, move || {
                            if let Some(me) = me.upgrade() {
                                me.disk_event(id, Event::DisconnectFailed);
                            }
                        });
                    }
                });
            if spawned.is_err() {
                conn.request_stop();
            }
        }
        if let Some(disk) = finished {
            disk.export.release();
            tracing::info!(device = %disk.device, "nbd: disk stopped");
            for w in disk.stop_waiters {
                w(Ok(()));
            }
            if let Some(f) = fini {
                f.done();
            }
        }
    }

    /// The connection `conn_id` closed: if it served a disk, that disk learns it. Main core.
    pub(crate) fn disk_conn_closed(&self, conn_id: u64) {
        let id = self.lock().disks.iter().find(|d| d.conn.id == conn_id).map(|d| d.id);
        if let Some(id) = id {
            self.disk_event(id, Event::ConnClosed);
        }
    }

    /// Stops every disk (the module's fini). Main core.
    pub(crate) fn stop_all_disks(&self) {
        let ids: Vec<u64> = self.lock().disks.iter().map(|d| d.id).collect();
        for id in ids {
            self.disk_event(id, Event::Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: Vec<Event>) -> (Phase, Vec<Effects>) {
        let mut p = Phase::Starting { stop_asked: false };
        let mut all = Vec::new();
        for ev in events {
            let (n, fx) = p.apply(ev);
            p = n;
            all.push(fx);
        }
        (p, all)
    }

    #[test]
    fn start_then_stop_finishes_when_both_sides_ended() {
        let (p, fx) = run(vec![Event::Up, Event::Stop, Event::ConnClosed]);
        assert_eq!(fx[0].started, Some(Ok(())));
        assert!(fx[1].disconnect && !fx[1].stop_conn);
        assert!(!fx[2].finished, "the kernel side is still running");
        assert_eq!(
            p,
            Phase::Stopping {
                conn_closed: true,
                kernel_done: false
            }
        );
        let (p, fx) = p.apply(Event::KernelDone(Ok(())));
        assert!(fx.finished);
        assert!(matches!(p, Phase::Stopping { .. }));
    }

    #[test]
    fn stop_while_starting_waits_for_the_answer() {
        let (p, fx) = run(vec![Event::Stop]);
        assert_eq!(fx[0], Effects::default());
        let (p2, fx) = p.apply(Event::Up);
        assert_eq!(fx.started, Some(Ok(())));
        assert!(fx.disconnect);
        assert!(matches!(p2, Phase::Stopping { .. }));
    }

    #[test]
    fn failed_starts_answer_with_an_error_and_end_both_sides() {
        let (_, fx) = run(vec![Event::NotUp]);
        assert!(matches!(fx[0].started, Some(Err(_))));
        assert!(fx[0].disconnect && fx[0].stop_conn);
        let (p, fx) = run(vec![Event::KernelDone(Err("EINVAL".into())), Event::ConnClosed]);
        assert!(fx[0].started.as_ref().unwrap().as_ref().unwrap_err().contains("EINVAL"));
        assert!(fx[0].stop_conn && !fx[0].disconnect);
        assert!(fx[1].finished);
        assert!(matches!(p, Phase::Stopping { .. }));
    }

    #[test]
    fn either_side_ending_alone_ends_the_other() {
        let (_, fx) = run(vec![Event::Up, Event::KernelDone(Err("timed out".into()))]);
        assert!(fx[1].stop_conn && fx[1].started.is_none());
        let (_, fx) = run(vec![Event::Up, Event::ConnClosed]);
        assert!(fx[1].disconnect);
        let (_, fx) = run(vec![Event::Up, Event::Stop, Event::DisconnectFailed]);
        assert!(fx[2].stop_conn, "a failed disconnect closes the connection instead");
    }

    #[test]
    fn device_paths() {
        assert_eq!(device_index("/dev/nbd0").unwrap(), 0);
        assert_eq!(device_index("/dev/nbd15").unwrap(), 15);
        for bad in ["/dev/nbd", "/dev/nbdx", "/dev/sda", "nbd0", "/dev/nbd0p1"] {
            assert_eq!(device_index(bad).unwrap_err().errno(), -22, "{bad}");
        }
    }
}
