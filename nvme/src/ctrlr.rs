//! A controller: its shared gate (read by the qpairs on every core), its state machine and the
//! admin poller on the main reactor. See the crate doc for the contract.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use keel_bdev::{BdevParams, BdevRegistry, IoCaps, IoOp};
use keel_nvme_proto::cqe::{AsyncEvent, AsyncEventType};
use keel_nvme_proto::identify::{decode_active_ns_list, IdentifyNamespace};
use keel_reactor::{current, IoDevice, PollStatus};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::bdev::{NsBdev, NsController};
use crate::module::NvmeModule;
use crate::opts::AttachOpts;
use crate::tcp::admin::{AdminEvent, AdminOp, AdminQueue};
use crate::tcp::qpair::QpairCell;
use crate::tcp::setup::uuid_of;
use crate::transport::{AdminSetup, NsInfo, Transport};
use crate::NvmeError;

/// `Shared::reset_requested` with no request.
const NO_RESET: u64 = u64::MAX;
/// How often the admin poller runs.
const ADMIN_POLL_US: u64 = 1000;
/// How long one admin connect attempt may take.
pub(crate) const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the qpairs do with I/O, set by the controller's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Live: issue.
    Open = 0,
    /// Resetting: hold queued I/O.
    Hold = 1,
    /// Resetting past fast_io_fail: fail I/O.
    Failing = 2,
    /// Deleted: fail I/O.
    Deleted = 3,
}

/// What every core knows of a controller. Written by the main reactor (the state machine),
/// read by the qpairs with atomic loads (no lock on the data path). The qid table is locked only
/// when a qpair is built or dropped.
pub(crate) struct Shared {
    pub name: String,
    pub opts: AttachOpts,
    pub transport: Transport,
    gate: AtomicU8,
    generation: AtomicU64,
    cntlid: AtomicU16,
    /// The generation at which a qpair asked for a reset (`NO_RESET`: none). A request made
    /// for an older generation is stale: that connection is already gone.
    reset_requested: AtomicU64,
    in_capsule_bytes: AtomicU32,
    max_xfer_bytes: AtomicU64,
    /// qids in use, index = qid - 1.
    qids: Mutex<Vec<bool>>,
}

impl Shared {
    pub(crate) fn gate(&self) -> Gate {
        match self.gate.load(Ordering::Acquire) {
            0 => Gate::Open,
            1 => Gate::Hold,
            2 => Gate::Failing,
            _ => Gate::Deleted,
        }
    }

    fn set_gate(&self, g: Gate) {
        self.gate.store(g as u8, Ordering::Release);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn cntlid(&self) -> u16 {
        self.cntlid.load(Ordering::Acquire)
    }

    pub(crate) fn in_capsule_bytes(&self) -> u32 {
        self.in_capsule_bytes.load(Ordering::Acquire)
    }

    pub(crate) fn max_xfer_bytes(&self) -> u64 {
        self.max_xfer_bytes.load(Ordering::Acquire)
    }

    /// Asks the controller for a reset: a qpair lost its connection to the controller of
    /// generation `gen`. Any core.
    pub(crate) fn request_reset(&self, gen: u64) {
        self.reset_requested.store(gen, Ordering::Release);
    }

    /// Whether a qpair asked for a reset of the current generation (and forgets the request).
    fn take_reset_request(&self) -> bool {
        self.reset_requested.swap(NO_RESET, Ordering::AcqRel) == self.generation()
    }

    /// A free I/O queue id, or 0 when all the controller granted are taken.
    pub(crate) fn take_qid(&self) -> u16 {
        let mut q = self.qids.lock().unwrap();
        match q.iter().position(|used| !used) {
            Some(i) => {
                q[i] = true;
                i as u16 + 1
            }
            None => {
                tracing::error!("nvme {}: no I/O queue left for another reactor", self.name);
                0
            }
        }
    }

    /// Gives `qid` back (0: none was taken).
    pub(crate) fn put_qid(&self, qid: u16) {
        if qid > 0 {
            if let Some(u) = self.qids.lock().unwrap().get_mut(qid as usize - 1) {
                *u = false;
            }
        }
    }

    /// Takes the facts of a fresh admin connect: a new generation the qpairs reconnect to.
    fn adopt(&self, setup: &AdminSetup) {
        self.cntlid.store(setup.cntlid, Ordering::Release);
        self.in_capsule_bytes.store(setup.in_capsule_bytes, Ordering::Release);
        self.max_xfer_bytes.store(setup.max_xfer_bytes, Ordering::Release);
        {
            let mut q = self.qids.lock().unwrap();
            let n = setup.io_queues.min(self.opts.num_io_queues) as usize;
            if q.len() < n {
                q.resize(n, false);
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.set_gate(Gate::Open);
    }
}

/// The controller's life (see the crate doc). Stepped by [`Controller::apply`] on the main
/// reactor, once per admin poll.
pub(crate) enum CtrlrState {
    /// Connected: the admin queue, when the next Keep Alive is due.
    Live {
        admin: Box<AdminQueue>,
        keep_alive_at: Instant,
    },
    /// Lost at `failed_at`; the next connect attempt at `next_try`, or the one running.
    Resetting {
        failed_at: Instant,
        next_try: Instant,
        attempt: Option<Receiver<Result<AdminSetup, NvmeError>>>,
    },
    /// Detached or lost for good: bdevs gone, poller stopped.
    Deleted,
}

impl CtrlrState {
    /// SPDK's name of the state in bdev_nvme_get_controllers.
    fn name(&self) -> &'static str {
        match self {
            CtrlrState::Live { .. } => "enabled",
            CtrlrState::Resetting { .. } => "resetting",
            CtrlrState::Deleted => "deleting",
        }
    }
}

/// The ops of a namespace bdev: read, write and flush always; unmap with Dataset Management
/// (ONCS bit 2), write zeroes with Write Zeroes (ONCS bit 3).
pub(crate) fn ns_caps(oncs: u16) -> IoCaps {
    let mut caps = IoCaps::of(&[IoOp::Read, IoOp::Write, IoOp::Flush, IoOp::Unmap, IoOp::WriteZeroes]);
    if oncs & (1 << 2) == 0 {
        caps = caps.without(IoOp::Unmap);
    }
    if oncs & (1 << 3) == 0 {
        caps = caps.without(IoOp::WriteZeroes);
    }
    caps
}

/// A namespace exported as a bdev.
struct NsEntry {
    bdev: String,
    info: NsInfo,
}

struct Inner {
    state: CtrlrState,
    namespaces: BTreeMap<u32, NsEntry>,
    /// UUIDs read for namespaces being added (AER).
    uuids: BTreeMap<u32, Option<Uuid>>,
    serial: String,
    model: String,
    firmware: String,
    /// ONCS of Identify Controller: which optional commands namespace bdevs offer.
    oncs: u16,
    /// Admin completions of one poll (kept: a Keep Alive allocates nothing).
    events: Vec<AdminEvent>,
    /// Keep Alive due times at which the previous one was still unanswered.
    keep_alive_late: u8,
}

/// One attached controller; see the crate doc. `Send + Sync`: held by the module; its state
/// is changed only on the main reactor (admin poller, RPCs).
pub struct Controller {
    shared: Arc<Shared>,
    io_device: IoDevice<QpairCell>,
    inner: Mutex<Inner>,
    reg: Weak<BdevRegistry>,
    module: Weak<NvmeModule>,
}

impl Controller {
    /// A live controller from a finished admin setup: registers its namespace bdevs and starts
    /// the admin poller. Returns it with the bdev names. Called on the main reactor.
    pub(crate) fn start(
        opts: AttachOpts,
        transport: Transport,
        setup: AdminSetup,
        reg: &Arc<BdevRegistry>,
        module: &Arc<NvmeModule>,
    ) -> (Arc<Controller>, Vec<String>) {
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            opts,
            transport,
            gate: AtomicU8::new(Gate::Hold as u8),
            generation: AtomicU64::new(0),
            cntlid: AtomicU16::new(0),
            reset_requested: AtomicU64::new(NO_RESET),
            in_capsule_bytes: AtomicU32::new(0),
            max_xfer_bytes: AtomicU64::new(4096),
            qids: Mutex::new(Vec::new()),
        });
        shared.adopt(&setup);
        let s2 = shared.clone();
        let io_device = IoDevice::new_cyclic(format!("nvme_{}", shared.name), move |_core, me| {
            QpairCell::new(s2.clone(), me)
        });
        let AdminSetup {
            conn,
            next_cid,
            aer_enabled,
            serial,
            model,
            firmware,
            oncs,
            namespaces,
            ..
        } = setup;
        let mut admin = Box::new(AdminQueue::new(conn, next_cid));
        if aer_enabled {
            let _ = admin.submit(AdminOp::Aer);
        }
        let c = Arc::new(Controller {
            shared,
            io_device,
            inner: Mutex::new(Inner {
                state: CtrlrState::Live {
                    admin,
                    keep_alive_at: Instant::now(),
                },
                namespaces: BTreeMap::new(),
                uuids: BTreeMap::new(),
                serial,
                model,
                firmware,
                oncs,
                events: Vec::with_capacity(16),
                keep_alive_late: 0,
            }),
            reg: Arc::downgrade(reg),
            module: Arc::downgrade(module),
        });
        let mut names = Vec::new();
        {
            let mut inner = c.inner.lock().unwrap();
            for ns in namespaces {
                if let Some(n) = c.add_ns(&mut inner, ns) {
                    names.push(n);
                }
            }
        }
        let weak = Arc::downgrade(&c);
        let slot: std::rc::Rc<std::cell::RefCell<Option<keel_reactor::PollerHandle>>> = Default::default();
        let slot2 = slot.clone();
        let h = current().register_timed_poller(format!("nvme_admin_{}", c.shared.name), ADMIN_POLL_US, move || {
            let alive = weak.upgrade().is_some_and(|c| c.apply());
            if !alive {
                if let Some(h) = slot2.borrow_mut().take() {
                    h.unregister();
                }
            }
            PollStatus::Idle
        });
        *slot.borrow_mut() = Some(h);
        (c, names)
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its attach options.
    pub fn opts(&self) -> &AttachOpts {
        &self.shared.opts
    }

    /// Names of its namespace bdevs, by namespace id.
    pub fn bdev_names(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .namespaces
            .values()
            .map(|n| n.bdev.clone())
            .collect()
    }

    /// Its state as SPDK names it ("enabled", "resetting", "deleting").
    pub fn state_name(&self) -> &'static str {
        self.inner.lock().unwrap().state.name()
    }

    /// One entry of bdev_nvme_get_controllers' `ctrlrs`.
    pub fn ctrlr_json(&self) -> Value {
        let inner = self.inner.lock().unwrap();
        json!({
            "state": inner.state.name(),
            "trid": self.shared.opts.trid.to_json(),
            "cntlid": self.shared.cntlid(),
            "host": {"nqn": self.shared.opts.hostnqn, "addr": "", "svcid": ""},
        })
    }

    /// Registers namespace `ns` as `{name}n{nsid}`; its name, or `None` if registration
    /// failed (logged).
    fn add_ns(self: &Arc<Self>, inner: &mut Inner, ns: NsInfo) -> Option<String> {
        let reg = self.reg.upgrade()?;
        let name = format!("{}n{}", self.shared.name, ns.nsid);
        let params = BdevParams {
            name: name.clone(),
            uuid: ns.uuid,
            product_name: "NVMe disk",
            module: crate::module::MODULE_NAME,
            block_size: ns.block_size,
            num_blocks: ns.num_blocks,
            caps: ns_caps(inner.oncs),
            optimal_io_boundary_blocks: 0,
        };
        let backend = Arc::new(NsBdev::new(
            Arc::downgrade(self),
            self.io_device.clone(),
            ns.nsid,
            ns.block_size,
        ));
        let mut r = reg.register(params.clone(), backend.clone());
        if r.is_err() && params.uuid.is_some() {
            // The UUID is taken in this registry (a namespace of a bdev of this very process):
            // the bdev gets a fresh one rather than no bdev at all.
            tracing::warn!(
                "nvme {}: namespace {} UUID in use here; registering with a new UUID",
                self.shared.name,
                ns.nsid
            );
            r = reg.register(BdevParams { uuid: None, ..params }, backend);
        }
        match r {
            Ok(_) => {
                inner.namespaces.insert(
                    ns.nsid,
                    NsEntry {
                        bdev: name.clone(),
                        info: ns,
                    },
                );
                Some(name)
            }
            Err(e) => {
                tracing::error!("nvme {}: namespace {} not registered: {e}", self.shared.name, ns.nsid);
                None
            }
        }
    }

    /// Hot-removes namespace `nsid`'s bdev.
    fn remove_ns(&self, inner: &mut Inner, nsid: u32) {
        if let Some(e) = inner.namespaces.remove(&nsid) {
            if let Some(reg) = self.reg.upgrade() {
                let _ = reg.unregister(&e.bdev, || {});
            }
        }
    }

    /// Makes the namespaces match `now` (after an AER or a reconnect): removes what is gone,
    /// adds what is new. A namespace whose size or block size changed is removed and added.
    fn sync_namespaces(self: &Arc<Self>, inner: &mut Inner, now: Vec<NsInfo>) {
        let gone: Vec<u32> = inner
            .namespaces
            .iter()
            .filter(|(id, e)| {
                !now.iter()
                    .any(|n| n.nsid == **id && n.block_size == e.info.block_size && n.num_blocks == e.info.num_blocks)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove_ns(inner, id);
        }
        for ns in now {
            if !inner.namespaces.contains_key(&ns.nsid) {
                self.add_ns(inner, ns);
            }
        }
    }

    /// Detaches: deletes the bdevs and stops. Main reactor.
    pub(crate) fn delete(self: &Arc<Self>) {
        let mut inner = self.inner.lock().unwrap();
        self.delete_locked(&mut inner);
    }

    fn delete_locked(self: &Arc<Self>, inner: &mut Inner) {
        self.shared.set_gate(Gate::Deleted);
        inner.state = CtrlrState::Deleted;
        let ids: Vec<u32> = inner.namespaces.keys().copied().collect();
        for id in ids {
            self.remove_ns(inner, id);
        }
        if let Some(m) = self.module.upgrade() {
            m.forget(&self.shared.name, self);
        }
    }

    /// One step of the state machine; false once deleted (the poller stops).
    fn apply(self: &Arc<Self>) -> bool {
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        let now = Instant::now();
        let opts = &self.shared.opts;
        let state = std::mem::replace(&mut inner.state, CtrlrState::Deleted);
        inner.state = match state {
            CtrlrState::Deleted => return false,
            CtrlrState::Live {
                mut admin,
                mut keep_alive_at,
            } => {
                let mut events = std::mem::take(&mut inner.events);
                let r = (|| -> Result<(), NvmeError> {
                    if self.shared.take_reset_request() {
                        return Err(NvmeError::Sequence("an I/O qpair failed"));
                    }
                    if opts.keep_alive_timeout_ms > 0 && now >= keep_alive_at {
                        if !admin.outstanding(AdminOp::KeepAlive) {
                            inner.keep_alive_late = 0;
                            admin.submit(AdminOp::KeepAlive)?;
                        } else {
                            // Unanswered for a whole KATO: the controller is gone for us.
                            inner.keep_alive_late += 1;
                            if inner.keep_alive_late >= 2 {
                                return Err(NvmeError::Timeout("the Keep Alive completion"));
                            }
                        }
                        keep_alive_at = now + Duration::from_millis(u64::from(opts.keep_alive_timeout_ms / 2).max(1));
                    }
                    admin.poll(&mut events)?;
                    for ev in events.drain(..) {
                        self.on_admin_event(inner, &mut admin, ev)?;
                    }
                    Ok(())
                })();
                events.clear();
                inner.events = events;
                match r {
                    Ok(()) => CtrlrState::Live { admin, keep_alive_at },
                    Err(e) => {
                        tracing::warn!("nvme {}: controller lost ({e}); resetting", self.shared.name);
                        self.shared.set_gate(Gate::Hold);
                        CtrlrState::Resetting {
                            failed_at: now,
                            next_try: now,
                            attempt: None,
                        }
                    }
                }
            }
            CtrlrState::Resetting {
                failed_at,
                next_try,
                attempt,
            } => {
                let lost_for = now.duration_since(failed_at);
                let loss = opts.ctrlr_loss_timeout_sec;
                if opts.fast_io_fail_timeout_sec > 0
                    && lost_for >= Duration::from_secs(opts.fast_io_fail_timeout_sec)
                    && self.shared.gate() == Gate::Hold
                {
                    self.shared.set_gate(Gate::Failing);
                }
                if loss > 0 && lost_for >= Duration::from_secs(loss as u64) {
                    tracing::warn!("nvme {}: ctrlr_loss_timeout_sec expired; deleting", self.shared.name);
                    self.delete_locked(inner);
                    return false;
                }
                match attempt {
                    Some(rx) => match rx.try_recv() {
                        Ok(Ok(setup)) => {
                            tracing::info!("nvme {}: reconnected (cntlid {})", self.shared.name, setup.cntlid);
                            self.shared.adopt(&setup);
                            let mut admin = Box::new(AdminQueue::new(setup.conn, setup.next_cid));
                            if setup.aer_enabled {
                                let _ = admin.submit(AdminOp::Aer);
                            }
                            inner.keep_alive_late = 0;
                            inner.serial = setup.serial;
                            inner.model = setup.model;
                            inner.firmware = setup.firmware;
                            inner.oncs = setup.oncs;
                            self.sync_namespaces(inner, setup.namespaces);
                            CtrlrState::Live {
                                admin,
                                keep_alive_at: now,
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::info!("nvme {}: reconnect failed: {e}", self.shared.name);
                            if loss == 0 {
                                self.delete_locked(inner);
                                return false;
                            }
                            CtrlrState::Resetting {
                                failed_at,
                                next_try: now + Duration::from_secs(opts.reconnect_delay_sec),
                                attempt: None,
                            }
                        }
                        Err(TryRecvError::Empty) => CtrlrState::Resetting {
                            failed_at,
                            next_try,
                            attempt: Some(rx),
                        },
                        Err(TryRecvError::Disconnected) => CtrlrState::Resetting {
                            failed_at,
                            next_try: now + Duration::from_secs(opts.reconnect_delay_sec),
                            attempt: None,
                        },
                    },
                    None if now >= next_try => CtrlrState::Resetting {
                        failed_at,
                        next_try,
                        attempt: Some(self.spawn_connect()),
                    },
                    None => CtrlrState::Resetting {
                        failed_at,
                        next_try,
                        attempt: None,
                    },
                }
            }
        };
        true
    }

    /// Starts an admin connect on a helper thread.
    fn spawn_connect(&self) -> Receiver<Result<AdminSetup, NvmeError>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nvme-reconnect-{}", shared.name))
            .spawn(move || {
                let deadline = Instant::now() + ADMIN_CONNECT_TIMEOUT;
                let _ = tx.send(shared.transport.connect_admin(&shared.opts, deadline));
            });
        if let Err(e) = spawned {
            tracing::error!("nvme: cannot start a reconnect thread: {e}");
        }
        rx
    }

    /// Handles one admin completion of a live controller.
    fn on_admin_event(
        self: &Arc<Self>,
        inner: &mut Inner,
        admin: &mut AdminQueue,
        ev: AdminEvent,
    ) -> Result<(), NvmeError> {
        match ev.op {
            AdminOp::KeepAlive => {
                if !ev.status.is_success() {
                    return Err(NvmeError::Status {
                        what: "Keep Alive",
                        status: ev.status,
                    });
                }
            }
            AdminOp::Aer => {
                if !ev.status.is_success() {
                    // Aborted at teardown or refused: do not re-arm.
                    return Ok(());
                }
                let e = AsyncEvent::from_dw0(ev.dw0);
                if e.event_type == AsyncEventType::NOTICE && e.info == AsyncEvent::NOTICE_NS_ATTRIBUTE_CHANGED {
                    admin.submit(AdminOp::ChangedNsLog)?;
                    admin.submit(AdminOp::ActiveNsList)?;
                }
                admin.submit(AdminOp::Aer)?;
            }
            AdminOp::ChangedNsLog => {}
            AdminOp::ActiveNsList => {
                if !ev.status.is_success() {
                    return Ok(());
                }
                let list: Vec<u32> = decode_active_ns_list(&ev.data)?.collect();
                let gone: Vec<u32> = inner
                    .namespaces
                    .keys()
                    .filter(|id| !list.contains(id))
                    .copied()
                    .collect();
                for id in gone {
                    tracing::info!("nvme {}: namespace {id} removed", self.shared.name);
                    self.remove_ns(inner, id);
                }
                for id in list {
                    if !inner.namespaces.contains_key(&id) && !inner.uuids.contains_key(&id) {
                        inner.uuids.insert(id, None);
                        admin.submit(AdminOp::NsDescs(id))?;
                        admin.submit(AdminOp::IdentifyNs(id))?;
                    }
                }
            }
            AdminOp::NsDescs(id) => {
                if ev.status.is_success() {
                    inner.uuids.insert(id, uuid_of(&ev.data));
                }
            }
            AdminOp::IdentifyNs(id) => {
                let uuid = inner.uuids.remove(&id).flatten();
                if ev.status.is_success() {
                    let ns = IdentifyNamespace::decode(&ev.data)?;
                    if ns.nsze > 0 && !inner.namespaces.contains_key(&id) {
                        match NsInfo::new(id, &ns, uuid) {
                            Ok(info) => {
                                tracing::info!("nvme {}: namespace {id} added", self.shared.name);
                                self.add_ns(inner, info);
                            }
                            Err(e) => tracing::warn!("nvme {}: namespace {id}: {e}", self.shared.name),
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl NsController for Controller {
    type Queue = QpairCell;

    /// `driver_specific.nvme` of a namespace bdev.
    fn ns_json(&self, nsid: u32) -> Value {
        let inner = self.inner.lock().unwrap();
        json!([{
            "trid": self.shared.opts.trid.to_json(),
            "ctrlr_data": {
                "cntlid": self.shared.cntlid(),
                "serial_number": inner.serial,
                "model_number": inner.model,
                "firmware_revision": inner.firmware,
            },
            "ns_data": {"id": nsid},
        }])
    }
}
