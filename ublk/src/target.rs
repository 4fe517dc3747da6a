//! [`UblkTarget`]: the ublk bdev module — the target (its cores and control rings) and its
//! disks, each stepped through [`Phase::apply`] on the main core (see the crate docs for the
//! life of a disk).
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};

use keel_bdev::{BdevModule, BdevRegistry, ConfigCall, ConfigEntry, Descriptor, IoOp, ModuleDone, Subsystem};
use keel_reactor::{current, try_current, CoreId, CoreMask, Cores, PollStatus, PollerHandle};
use serde_json::json;

use crate::ctrl::{CtrlRing, CONTROL_PATH};
use crate::error::UblkError;
use crate::queue::{self, Queue, QueueSpec};
use crate::wire::{self, DevInfo, Params, CMD_DEL_DEV, CMD_END_USER_RECOVERY, CMD_START_DEV, CMD_STOP_DEV};

/// The module name.
pub const MODULE: &str = "ublk";

/// The `"ublk"` save_config subsystem: configured after the bdevs it serves.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "ublk",
    depends_on: &["bdev"],
};

/// Bytes per request and per tag buffer (SPDK's 64 KiB).
const MAX_IO_BUF_BYTES: u32 = 64 << 10;
/// SPDK's limits of `ublk_start_disk`.
const MAX_QUEUES: u16 = 32;
const MAX_QUEUE_DEPTH: u16 = 1024;
/// How often the main core reaps the slow control ring (SPDK's control poller period).
const CTRL_POLL_US: u64 = 1000;
/// `ublk_recover_disk` looks for a quiesced device this many times, this far apart (SPDK's).
const RECOVER_TRIES: u32 = 3;
const RECOVER_RETRY_US: u64 = 1_000_000;

/// `ublk_start_disk` parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartDisk {
    /// The bdev to serve.
    pub bdev_name: String,
    /// The device id N of `/dev/ublkbN`.
    pub ublk_id: u32,
    /// Queues (1..=32; SPDK's default 1).
    pub num_queues: u16,
    /// Tags per queue (1..=1024; SPDK's default 128).
    pub queue_depth: u16,
}

/// One disk as `ublk_get_disks` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStatus {
    /// `/dev/ublkbN`.
    pub ublk_device: String,
    /// N.
    pub id: u32,
    /// Tags per queue.
    pub queue_depth: u16,
    /// Queues.
    pub num_queues: u16,
    /// The bdev.
    pub bdev_name: String,
}

/// Where a disk is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Queues are being armed on their cores: `left` still to report, `started` of them ran.
    Arming { left: u16, failed: bool, stop_asked: bool },
    /// START_DEV is with the kernel.
    Starting { stop_asked: bool },
    /// Serving.
    Running,
    /// STOP_DEV sent (or not needed); waiting for it and for the queues to finish.
    Stopping { stop_done: bool },
    /// DEL_DEV sent.
    Deleting,
}

/// What happens to a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A queue armed its tags (`Err`: it could not start).
    QueueArmed(Result<(), String>),
    /// START_DEV's result.
    Started(i32),
    /// Stop it.
    Stop,
    /// STOP_DEV's result.
    StopDone(i32),
    /// A queue finished on its core.
    QueueDone,
    /// DEL_DEV's result.
    Deleted(i32),
}

/// What a step asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// Submit START_DEV.
    pub start_dev: bool,
    /// Answer `ublk_start_disk` (Err: why not).
    pub started: Option<Result<(), String>>,
    /// Submit STOP_DEV.
    pub stop_dev: bool,
    /// Close the char device and submit DEL_DEV (once STOP_DEV and every queue are done).
    pub del_dev: bool,
    /// Gone: release the bdev, answer the stops.
    pub finished: bool,
}

impl Phase {
    /// The one step: the phase after `ev` given `queues_running` (queues armed and not yet
    /// finished, after the event is counted), and what to do.
    pub(crate) fn apply(self, ev: Event, queues_running: usize) -> (Phase, Effects) {
        use Event as E;
        use Phase as P;
        let mut fx = Effects::default();
        // Stopping ends in DEL_DEV once STOP_DEV is answered and the last queue finished.
        let stopping = |stop_done: bool, fx: &mut Effects| {
            if stop_done && queues_running == 0 {
                fx.del_dev = true;
                P::Deleting
            } else {
                P::Stopping { stop_done }
            }
        };
        let next = match (self, ev) {
            (
                P::Arming {
                    left,
                    failed,
                    stop_asked,
                },
                E::QueueArmed(r),
            ) => {
                let failed = failed || r.is_err();
                let left = left.saturating_sub(1);
                if left > 0 {
                    P::Arming {
                        left,
                        failed,
                        stop_asked,
                    }
                } else if failed || stop_asked {
                    fx.started = Some(Err(if failed {
                        "a queue could not be started".into()
                    } else {
                        "stopped while starting".into()
                    }));
                    // STOP_DEV aborts the tags the other queues armed.
                    fx.stop_dev = true;
                    P::Stopping { stop_done: false }
                } else {
                    fx.start_dev = true;
                    P::Starting { stop_asked: false }
                }
            }
            (P::Arming { left, failed, .. }, E::Stop) => P::Arming {
                left,
                failed,
                stop_asked: true,
            },
            (P::Starting { .. }, E::Stop) => P::Starting { stop_asked: true },
            (P::Starting { stop_asked }, E::Started(res)) => {
                if res == 0 && !stop_asked {
                    fx.started = Some(Ok(()));
                    P::Running
                } else {
                    fx.started = Some(Err(if res < 0 {
                        format!("START_DEV failed: {}", std::io::Error::from_raw_os_error(-res))
                    } else {
                        "stopped while starting".into()
                    }));
                    fx.stop_dev = true;
                    P::Stopping { stop_done: false }
                }
            }
            (P::Running, E::Stop) => {
                fx.stop_dev = true;
                P::Stopping { stop_done: false }
            }
            (P::Stopping { .. }, E::StopDone(_)) => stopping(true, &mut fx),
            (P::Stopping { stop_done }, E::QueueDone) => stopping(stop_done, &mut fx),
            (P::Deleting, E::Deleted(_)) => {
                fx.finished = true;
                P::Deleting
            }
            // A queue that ends on its own (the kernel aborted its tags) while running: the
            // device is going; stop it properly.
            (P::Running, E::QueueDone) => {
                fx.stop_dev = true;
                P::Stopping { stop_done: false }
            }
            (p, _) => p,
        };
        (next, fx)
    }
}

type Answer<T> = Box<dyn FnOnce(Result<T, UblkError>) + Send>;

/// One disk (in the target's state, changed on the main core).
struct Disk {
    id: u32,
    bdev_name: String,
    num_queues: u16,
    queue_depth: u16,
    desc: Arc<Mutex<Option<Descriptor>>>,
    /// `/dev/ublkcN`, closed before DEL_DEV.
    cdev: Option<Arc<File>>,
    phase: Phase,
    queues_running: usize,
    /// Taken over from a dead server: the last queue armed sends END_USER_RECOVERY, not
    /// START_DEV.
    recovering: bool,
    start_reply: Option<Answer<u32>>,
    stop_waiters: Vec<Answer<()>>,
}

impl Disk {
    fn status(&self) -> DiskStatus {
        DiskStatus {
            ublk_device: format!("/dev/ublkb{}", self.id),
            id: self.id,
            queue_depth: self.queue_depth,
            num_queues: self.num_queues,
            bdev_name: self.bdev_name.clone(),
        }
    }
}

/// The target: its cores and control rings.
struct Target {
    /// The mask as given (save_config repeats it).
    cpumask: Option<String>,
    cores: Vec<CoreId>,
    /// Next core for a queue (round robin over `cores`).
    cursor: usize,
    quick: CtrlRing,
    slow: CtrlRing,
    features: u64,
    /// `ublk_destroy_target` answers waiting for the last disk.
    destroying: Vec<Answer<()>>,
}

#[derive(Default)]
struct State {
    target: Option<Target>,
    disks: Vec<Disk>,
    fini: Option<ModuleDone>,
}

/// The ublk module of one bdev registry (see the crate docs). Its methods run on the main core.
pub struct UblkTarget {
    me: Weak<UblkTarget>,
    reg: Weak<BdevRegistry>,
    cores: Cores,
    state: Mutex<State>,
}

const UD_START: u64 = 1 << 32;
const UD_STOP: u64 = 2 << 32;
const UD_DEL: u64 = 3 << 32;

impl BdevModule for UblkTarget {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<Self> {
        let cores = reg.cores().clone();
        Arc::new_cyclic(|me| UblkTarget {
            me: me.clone(),
            reg: Arc::downgrade(reg),
            cores,
            state: Mutex::new(State::default()),
        })
    }

    fn name(&self) -> &'static str {
        MODULE
    }

    fn subsystem(&self) -> Subsystem {
        SUBSYSTEM
    }

    /// Stops every disk and closes the target; done once the last disk is deleted.
    fn fini(&self, done: ModuleDone) {
        let mut st = self.lock();
        if st.target.is_none() && st.disks.is_empty() {
            drop(st);
            return done.done();
        }
        st.fini = Some(done);
        drop(st);
        self.stop_all();
        self.maybe_close_target();
    }

    /// `ublk_create_target`, then `ublk_start_disk` for every running disk.
    fn config(&self, _reg: &BdevRegistry) -> Vec<ConfigEntry> {
        let st = self.lock();
        let Some(t) = &st.target else {
            return Vec::new();
        };
        let mut params = json!({});
        if let Some(m) = &t.cpumask {
            params["cpumask"] = json!(m);
        }
        let mut out = vec![ConfigEntry::new(ConfigCall {
            method: "ublk_create_target",
            params,
        })];
        for d in st.disks.iter().filter(|d| d.phase == Phase::Running) {
            out.push(
                ConfigEntry::new(ConfigCall {
                    method: "ublk_start_disk",
                    params: json!({
                        "bdev_name": d.bdev_name,
                        "ublk_id": d.id,
                        "num_queues": d.num_queues,
                        "queue_depth": d.queue_depth,
                    }),
                })
                .needs([d.bdev_name.clone()]),
            );
        }
        out
    }
}

impl UblkTarget {
    /// The module of `reg` (created on first use). Any thread.
    pub fn of(reg: &Arc<BdevRegistry>) -> Arc<UblkTarget> {
        reg.module::<UblkTarget>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_main(&self, what: &str) -> Result<(), UblkError> {
        let main = self.cores.main_core();
        if try_current().is_none_or(|r| r.core() != main) {
            return Err(UblkError::Busy(format!("{what} runs on the main reactor")));
        }
        Ok(())
    }

    /// `ublk_create_target`: opens `/dev/ublk-control`, asks the driver's features and takes
    /// the cores of `cpumask` (default: every reactor) for queues. EBUSY if one exists; the
    /// OS's error, naming the module, where the kernel has no ublk. Main core.
    pub fn create_target(&self, cpumask: Option<&str>) -> Result<(), UblkError> {
        self.on_main("ublk_create_target")?;
        if self.lock().target.is_some() {
            return Err(UblkError::Busy("UBLK target has been created".into()));
        }
        let all = self.cores.core_ids();
        let cores = match cpumask {
            None => all,
            Some(text) => {
                let mask =
                    CoreMask::parse(text).map_err(|e| UblkError::Invalid(format!("invalid cpumask '{text}': {e}")))?;
                let cores = mask.cores().to_vec();
                if cores.is_empty() || cores.iter().any(|c| !all.contains(c)) {
                    return Err(UblkError::Invalid(format!(
                        "cpumask '{text}' is not a non-empty subset of the reactors' cores"
                    )));
                }
                cores
            }
        };
        let open = |entries| {
            CtrlRing::open(entries).map_err(|e| {
                UblkError::os(
                    format!("cannot open {CONTROL_PATH} (is the ublk_drv module loaded?)"),
                    e,
                )
            })
        };
        let mut quick = open(4)?;
        let slow = open(128)?;
        let features = quick
            .get_features()
            .map_err(|e| UblkError::os("UBLK_U_CMD_GET_FEATURES", e))?;
        tracing::info!(
            features = format_args!("{features:#x}"),
            cores = cores.len(),
            "ublk: target created"
        );
        self.lock().target = Some(Target {
            cpumask: cpumask.map(str::to_string),
            cores,
            cursor: 0,
            quick,
            slow,
            features,
            destroying: Vec::new(),
        });
        self.start_ctrl_poller();
        Ok(())
    }

    /// The main-core poller that reaps the slow control ring while the target exists.
    fn start_ctrl_poller(&self) {
        let me = self.me.clone();
        let slot: Rc<RefCell<Option<PollerHandle>>> = Rc::new(RefCell::new(None));
        let s2 = slot.clone();
        let mut got = Vec::with_capacity(16);
        let handle = current().register_timed_poller("ublk_ctrl".to_string(), CTRL_POLL_US, move || {
            let Some(me) = me.upgrade() else {
                drop(s2.borrow_mut().take());
                return PollStatus::Idle;
            };
            got.clear();
            {
                let mut st = me.lock();
                match st.target.as_mut() {
                    Some(t) => t.slow.reap(&mut got),
                    None => {
                        drop(st);
                        drop(s2.borrow_mut().take());
                        return PollStatus::Busy;
                    }
                }
            }
            for &(ud, res) in &got {
                let id = (ud & 0xffff_ffff) as u32;
                let ev = match ud & !0xffff_ffff {
                    UD_START => Event::Started(res),
                    UD_STOP => Event::StopDone(res),
                    _ => Event::Deleted(res),
                };
                me.disk_event(id, ev);
            }
            if got.is_empty() {
                PollStatus::Idle
            } else {
                PollStatus::Busy
            }
        });
        *slot.borrow_mut() = Some(handle);
    }

    /// `ublk_destroy_target`: stops every disk, then closes the target; `done` runs once the
    /// last disk is deleted. ENOENT without a target. Main core.
    pub fn destroy_target(&self, done: impl FnOnce(Result<(), UblkError>) + Send + 'static) {
        if let Err(e) = self.on_main("ublk_destroy_target") {
            return done(Err(e));
        }
        {
            let mut st = self.lock();
            let Some(t) = st.target.as_mut() else {
                drop(st);
                return done(Err(UblkError::NoEntry("no ublk target".into())));
            };
            t.destroying.push(Box::new(done));
        }
        self.stop_all();
        self.maybe_close_target();
    }

    /// Closes the target once it is being destroyed (or the module finishing) and no disk is
    /// left; answers the waiters.
    fn maybe_close_target(&self) {
        let mut st = self.lock();
        let closing = st.fini.is_some() || st.target.as_ref().is_some_and(|t| !t.destroying.is_empty());
        if !closing || !st.disks.is_empty() {
            return;
        }
        let target = st.target.take();
        let fini = st.fini.take();
        drop(st);
        if let Some(t) = target {
            tracing::info!("ublk: target destroyed");
            for w in t.destroying {
                w(Ok(()));
            }
        }
        if let Some(f) = fini {
            f.done();
        }
    }

    fn stop_all(&self) {
        let ids: Vec<u32> = self.lock().disks.iter().map(|d| d.id).collect();
        for id in ids {
            self.disk_event(id, Event::Stop);
        }
    }

    /// `ublk_start_disk`: serves `p.bdev_name` as `/dev/ublkb{p.ublk_id}`; `reply` gets the id
    /// once the kernel added the disk, or the error. ENODEV without a target or bdev, EBUSY for
    /// an id in use, EINVAL for bad sizes. Main core (the answer comes there too).
    pub fn start_disk(&self, p: &StartDisk, reply: impl FnOnce(Result<u32, UblkError>) + Send + 'static) {
        match self.begin_disk(p) {
            Ok(()) => {
                let mut st = self.lock();
                if let Some(d) = st.disks.iter_mut().find(|d| d.id == p.ublk_id) {
                    d.start_reply = Some(Box::new(reply));
                }
            }
            Err(e) => reply(Err(e)),
        }
    }

    fn begin_disk(&self, p: &StartDisk) -> Result<(), UblkError> {
        self.on_main("ublk_start_disk")?;
        if !(1..=MAX_QUEUES).contains(&p.num_queues) {
            return Err(UblkError::Invalid(format!(
                "num_queues {} is not in 1..={MAX_QUEUES}",
                p.num_queues
            )));
        }
        if !(1..=MAX_QUEUE_DEPTH).contains(&p.queue_depth) {
            return Err(UblkError::Invalid(format!(
                "queue_depth {} is not in 1..={MAX_QUEUE_DEPTH}",
                p.queue_depth
            )));
        }
        self.check_id_free(p.ublk_id)?;
        let id = p.ublk_id;
        let (desc, info, shift) = self.open_bdev(&p.bdev_name, id)?;
        let bs = info.block_size;
        let features = self.lock().target.as_ref().expect("checked above").features;
        // Recovery where the driver has it (as SPDK): the disk outlives a crash of this process.
        let flags = (wire::F_URING_CMD_COMP_IN_TASK
            | wire::F_CMD_IOCTL_ENCODE
            | wire::F_USER_RECOVERY
            | wire::F_USER_RECOVERY_REISSUE)
            & features;
        let want = DevInfo {
            nr_hw_queues: p.num_queues,
            queue_depth: p.queue_depth,
            max_io_buf_bytes: MAX_IO_BUF_BYTES,
            dev_id: id,
            flags,
            ..DevInfo::default()
        };
        let added = {
            let mut st = self.lock();
            let t = st.target.as_mut().expect("checked above");
            t.quick.add_dev(&want)
        };
        let added = added.map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => UblkError::Busy(format!(
                "ublk id {id} is in use by another process (or by a disk a crashed server left: ublk_recover_disk takes it over)"
            )),
            _ => UblkError::os("UBLK_U_CMD_ADD_DEV", e),
        })?;
        let discard = info.caps.supports(IoOp::Unmap);
        let optimal = info.optimal_io_boundary_blocks.saturating_mul(bs);
        let params = Params {
            attrs: if info.caps.supports(IoOp::Flush) {
                wire::ATTR_VOLATILE_CACHE
            } else {
                0
            },
            logical_bs_shift: shift as u8,
            physical_bs_shift: shift as u8,
            io_opt_shift: if optimal.is_power_of_two() && optimal > bs {
                optimal.trailing_zeros() as u8
            } else {
                shift as u8
            },
            io_min_shift: shift as u8,
            max_sectors: added.max_io_buf_bytes.min(MAX_IO_BUF_BYTES) >> 9,
            dev_sectors: info.num_blocks << (shift - 9),
            discard_sectors: discard.then_some(32768),
            write_zeroes_sectors: if discard && info.caps.supports(IoOp::WriteZeroes) {
                32768
            } else {
                0
            },
        };
        let set_up = (|| {
            let mut st = self.lock();
            let t = st.target.as_mut().expect("checked above");
            t.quick
                .set_params(id, &params)
                .map_err(|e| UblkError::os("UBLK_U_CMD_SET_PARAMS", e))?;
            drop(st);
            open_cdev(id)
        })();
        let cdev = match set_up {
            Ok(f) => Arc::new(f),
            Err(e) => {
                // Nothing runs yet: delete the device at once (no char device is open).
                let mut st = self.lock();
                if let Some(t) = st.target.as_mut() {
                    if let Err(de) = t.slow.submit(CMD_DEL_DEV, id, 0, UD_DEL | u64::from(id)) {
                        tracing::warn!(error = %de, ublk_id = id, "ublk: cannot delete a device that failed to start");
                    }
                }
                return Err(e);
            }
        };
        let nq = added.nr_hw_queues.min(p.num_queues);
        self.arm(desc, &info, shift, id, nq, added.queue_depth, cdev, false);
        tracing::info!(ublk_id = id, bdev = %info.name, queues = nq, depth = added.queue_depth, "ublk: disk starting");
        Ok(())
    }

    /// EBUSY/ENODEV/EINVAL checks shared by start and recover: a target that is not being
    /// destroyed, an id below 2^20 that no disk of ours has.
    fn check_id_free(&self, id: u32) -> Result<(), UblkError> {
        if id >= 1 << 20 {
            return Err(UblkError::Invalid(format!("ublk_id {id} is not below 2^20")));
        }
        let st = self.lock();
        if st.target.is_none() {
            return Err(UblkError::NoDevice(
                "no ublk target: call ublk_create_target first".into(),
            ));
        }
        if st.target.as_ref().is_some_and(|t| !t.destroying.is_empty()) || st.fini.is_some() {
            return Err(UblkError::Busy("the ublk target is being destroyed".into()));
        }
        if st.disks.iter().any(|d| d.id == id) {
            return Err(UblkError::Busy(format!("ublk id {id} is in use")));
        }
        Ok(())
    }

    /// Opens `bdev_name` for disk `id` (its removal stops the disk): the descriptor, the bdev's
    /// info and log2 of its block size (512 to 4096).
    fn open_bdev(&self, bdev_name: &str, id: u32) -> Result<(Descriptor, keel_bdev::BdevInfo, u32), UblkError> {
        let reg = self
            .reg
            .upgrade()
            .ok_or_else(|| UblkError::NoDevice("the bdev registry is gone".into()))?;
        let me = self.me.clone();
        let desc = reg
            .open(bdev_name, true, move |_event| {
                if let Some(me) = me.upgrade() {
                    tracing::info!(
                        ublk_id = id,
                        "ublk: the disk's bdev is being removed; stopping the disk"
                    );
                    me.disk_event(id, Event::Stop);
                }
            })
            .map_err(|e| match e {
                keel_bdev::BdevError::NotFound(_) => UblkError::NoDevice(format!("bdev '{bdev_name}' not found")),
                other => UblkError::Busy(other.to_string()),
            })?;
        let info = desc.info().clone();
        let bs = info.block_size;
        if !(512..=4096).contains(&bs) || !bs.is_power_of_two() {
            return Err(UblkError::Invalid(format!(
                "block size {bs} of '{bdev_name}': ublk takes 512 to 4096"
            )));
        }
        Ok((desc, info, bs.trailing_zeros()))
    }

    /// Records disk `id` (arming) and starts its `nq` queues round robin over the target's
    /// cores; the last queue armed sends START_DEV (or END_USER_RECOVERY when `recovering`).
    #[allow(clippy::too_many_arguments)]
    fn arm(
        &self,
        desc: Descriptor,
        info: &keel_bdev::BdevInfo,
        shift: u32,
        id: u32,
        nq: u16,
        depth: u16,
        cdev: Arc<File>,
        recovering: bool,
    ) {
        let cores_for_queues: Vec<CoreId> = {
            let mut st = self.lock();
            let t = st.target.as_mut().expect("the caller checked the target");
            (0..nq)
                .map(|_| {
                    let c = t.cores[t.cursor % t.cores.len()];
                    t.cursor += 1;
                    c
                })
                .collect()
        };
        desc.hold(format!("ublk disk /dev/ublkb{id}"));
        let desc = Arc::new(Mutex::new(Some(desc)));
        self.lock().disks.push(Disk {
            id,
            bdev_name: info.name.clone(),
            num_queues: nq,
            queue_depth: depth,
            desc: desc.clone(),
            cdev: Some(cdev.clone()),
            phase: Phase::Arming {
                left: nq,
                failed: false,
                stop_asked: false,
            },
            recovering,
            queues_running: 0,
            start_reply: None,
            stop_waiters: Vec::new(),
        });
        let main = self.cores.main_core();
        for (q_id, &core) in cores_for_queues.iter().enumerate() {
            let spec = QueueSpec {
                dev_id: id,
                q_id: q_id as u16,
                depth,
                buf_bytes: MAX_IO_BUF_BYTES as usize,
                cdev: cdev.clone(),
                block_shift: shift,
                num_blocks: info.num_blocks,
            };
            let (me, desc, cores) = (self.me.clone(), desc.clone(), self.cores.clone());
            let sent = self.cores.run_on(core, move || {
                let tell = {
                    let cores = cores.clone();
                    let me = me.clone();
                    move |ev: Event| {
                        let _ = cores.run_on(main, move || {
                            if let Some(me) = me.upgrade() {
                                me.disk_event(id, ev);
                            }
                        });
                    }
                };
                let ch = desc
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|d| d.channel());
                let Some(ch) = ch else {
                    return tell(Event::QueueArmed(Err("the bdev is gone".into())));
                };
                match Queue::start(spec, ch) {
                    Ok(q) => {
                        let tell2 = tell.clone();
                        queue::run(q, move || tell2(Event::QueueDone));
                        tell(Event::QueueArmed(Ok(())));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, ublk_id = id, "ublk: a queue could not start");
                        tell(Event::QueueArmed(Err(e.to_string())));
                    }
                }
            });
            if sent.is_err() {
                self.disk_event(id, Event::QueueArmed(Err("no reactor for the queue".into())));
            }
        }
    }

    /// `ublk_recover_disk` (SPDK's method): takes over `/dev/ublkb{ublk_id}`, which a server
    /// that died left quiesced (created with recovery, as every Keel disk is where the driver
    /// offers it), serving it from `bdev_name` — which must have the disk's size and block size.
    /// The disk keeps its queues and depth; I/O the dead server held is re-issued, I/O queued
    /// meanwhile resumes. `reply` gets the id once END_USER_RECOVERY completed. ENOTSUP for a
    /// disk made without recovery; EBUSY while it is still served (not quiesced yet: the kernel
    /// quiesces it as the old process's rings go, so this retries 3 times a second apart, as
    /// SPDK); ENODEV for an unknown id or bdev; EINVAL for a bdev that does not match. Main
    /// core.
    pub fn recover_disk(
        &self,
        bdev_name: &str,
        ublk_id: u32,
        reply: impl FnOnce(Result<u32, UblkError>) + Send + 'static,
    ) {
        if let Err(e) = self.on_main("ublk_recover_disk") {
            return reply(Err(e));
        }
        self.recover_attempt(bdev_name.to_string(), ublk_id, RECOVER_TRIES, Box::new(reply));
    }

    fn recover_attempt(&self, bdev_name: String, id: u32, tries_left: u32, reply: Answer<u32>) {
        if let Err(e) = self.check_id_free(id) {
            return reply(Err(e));
        }
        let info = {
            let mut st = self.lock();
            let Some(t) = st.target.as_mut() else {
                drop(st);
                return reply(Err(UblkError::NoDevice("the ublk target is gone".into())));
            };
            t.quick.get_dev_info(id)
        };
        let dev = match info {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                return reply(Err(UblkError::NoDevice(format!("no ublk device {id} to recover"))));
            }
            Err(e) => return reply(Err(UblkError::os("UBLK_U_CMD_GET_DEV_INFO", e))),
        };
        if dev.flags & wire::F_USER_RECOVERY == 0 {
            return reply(Err(UblkError::NotSupported(format!(
                "ublk device {id} was created without user recovery; it cannot be recovered"
            ))));
        }
        if dev.state != wire::STATE_QUIESCED {
            if tries_left > 1 {
                let me = self.me.clone();
                let slot: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
                let s2 = slot.clone();
                let mut pending = Some((bdev_name, reply));
                let h = current().register_timed_poller("ublk_recover_retry", RECOVER_RETRY_US, move || {
                    s2.borrow_mut().take();
                    if let (Some(me), Some((b, r))) = (me.upgrade(), pending.take()) {
                        me.recover_attempt(b, id, tries_left - 1, r);
                    }
                    PollStatus::Busy
                });
                *slot.borrow_mut() = Some(h);
                return;
            }
            return reply(Err(UblkError::Busy(format!(
                "ublk device {id} is not waiting for recovery (state {}, server pid {}): only a disk whose server died can be recovered",
                dev.state, dev.ublksrv_pid
            ))));
        }
        let (desc, info, shift) = match self.open_bdev(&bdev_name, id) {
            Ok(v) => v,
            Err(e) => return reply(Err(e)),
        };
        if let Err(why) = matches_disk(id, &info) {
            return reply(Err(UblkError::Invalid(why)));
        }
        let begun = {
            let mut st = self.lock();
            let t = st.target.as_mut().expect("checked above");
            t.quick.start_user_recovery(id)
        };
        if let Err(e) = begun {
            return reply(Err(match e.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EINVAL) => UblkError::Busy(format!(
                    "ublk device {id}: the kernel refused START_USER_RECOVERY ({e}); is its old server still holding /dev/ublkc{id}?"
                )),
                _ => UblkError::os("UBLK_U_CMD_START_USER_RECOVERY", e),
            }));
        }
        let cdev = match open_cdev(id) {
            Ok(f) => Arc::new(f),
            Err(e) => return reply(Err(e)),
        };
        let nq = dev.nr_hw_queues;
        self.arm(desc, &info, shift, id, nq, dev.queue_depth, cdev, true);
        if let Some(d) = self.lock().disks.iter_mut().find(|d| d.id == id) {
            d.start_reply = Some(reply);
        }
        tracing::info!(ublk_id = id, bdev = %info.name, queues = nq, depth = dev.queue_depth, "ublk: recovering disk");
    }

    /// `ublk_stop_disk`: stops disk `id`; `done` runs once the kernel deleted the device and
    /// the bdev is released. ENODEV for an unknown id. Main core.
    pub fn stop_disk(&self, id: u32, done: impl FnOnce(Result<(), UblkError>) + Send + 'static) {
        {
            let mut st = self.lock();
            let Some(d) = st.disks.iter_mut().find(|d| d.id == id) else {
                drop(st);
                return done(Err(UblkError::NoDevice(format!("no ublk disk with id {id}"))));
            };
            d.stop_waiters.push(Box::new(done));
        }
        tracing::info!(ublk_id = id, "ublk: stopping disk");
        self.disk_event(id, Event::Stop);
    }

    /// Every disk (`ublk_get_disks`), in start order.
    pub fn disks(&self) -> Vec<DiskStatus> {
        self.lock().disks.iter().map(Disk::status).collect()
    }

    /// Whether a target exists.
    pub fn has_target(&self) -> bool {
        self.lock().target.is_some()
    }

    /// Steps disk `id` and carries out what the step asks. Main core.
    pub(crate) fn disk_event(&self, id: u32, ev: Event) {
        let mut st = self.lock();
        let Some(pos) = st.disks.iter().position(|d| d.id == id) else {
            return;
        };
        let d = &mut st.disks[pos];
        match &ev {
            Event::QueueArmed(Ok(())) => d.queues_running += 1,
            Event::QueueDone => d.queues_running = d.queues_running.saturating_sub(1),
            _ => {}
        }
        let (next, fx) = d.phase.apply(ev.clone(), d.queues_running);
        tracing::debug!(ublk_id = id, from = ?d.phase, event = ?ev, to = ?next, "ublk: disk step");
        d.phase = next;
        let start_reply = fx.started.as_ref().and_then(|_| d.start_reply.take());
        let st_recovering = d.recovering;
        let cdev = if fx.del_dev { d.cdev.take() } else { None };
        drop(cdev);
        let mut submit_err = None;
        if let Some(t) = st.target.as_mut() {
            let pid = u64::from(std::process::id());
            let r = if fx.start_dev {
                let op = if st_recovering {
                    CMD_END_USER_RECOVERY
                } else {
                    CMD_START_DEV
                };
                t.slow.submit(op, id, pid, UD_START | u64::from(id))
            } else if fx.stop_dev {
                t.slow.submit(CMD_STOP_DEV, id, 0, UD_STOP | u64::from(id))
            } else if fx.del_dev {
                t.slow.submit(CMD_DEL_DEV, id, 0, UD_DEL | u64::from(id))
            } else {
                Ok(())
            };
            submit_err = r.err();
        }
        let finished = fx.finished.then(|| st.disks.remove(pos));
        drop(st);
        if let (Some(r), Some(reply)) = (fx.started, start_reply) {
            match r {
                Ok(()) => {
                    tracing::info!(ublk_id = id, "ublk: disk running as /dev/ublkb{id}");
                    reply(Ok(id));
                }
                Err(why) => {
                    tracing::warn!(ublk_id = id, why = %why, "ublk: disk did not start");
                    reply(Err(UblkError::Busy(format!("/dev/ublkb{id}: {why}"))));
                }
            }
        }
        if let Some(e) = submit_err {
            tracing::error!(error = %e, ublk_id = id, "ublk: cannot submit a control command");
        }
        if let Some(d) = finished {
            drop(d.desc.lock().unwrap_or_else(|e| e.into_inner()).take());
            tracing::info!(ublk_id = id, "ublk: disk deleted");
            if let Some(r) = d.start_reply {
                r(Err(UblkError::Busy(format!(
                    "/dev/ublkb{id} was stopped while starting"
                ))));
            }
            for w in d.stop_waiters {
                w(Ok(()));
            }
            self.maybe_close_target();
        }
    }
}

/// Whether bdev `info` can serve ublk disk `id` as the kernel knows it (its size and logical
/// block size in sysfs), as a recovery needs: the parameters persist across servers.
fn matches_disk(id: u32, info: &keel_bdev::BdevInfo) -> Result<(), String> {
    let read = |what: &str| -> Result<u64, String> {
        let path = format!("/sys/block/ublkb{id}/{what}");
        std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {path}: {e}"))?
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{path}: {e}"))
    };
    let sectors = read("size")?;
    let bs = read("queue/logical_block_size")?;
    let want = info.num_blocks.saturating_mul(u64::from(info.block_size)) / 512;
    if sectors != want || bs != u64::from(info.block_size) {
        return Err(format!(
            "bdev '{}' ({} blocks of {} bytes) does not match /dev/ublkb{id} ({sectors} sectors, {bs}-byte blocks)",
            info.name, info.num_blocks, info.block_size
        ));
    }
    Ok(())
}

/// Opens `/dev/ublkcN`, which ADD_DEV just created (devtmpfs makes the node; give it a moment).
fn open_cdev(id: u32) -> Result<File, UblkError> {
    let path = format!("/dev/ublkc{id}");
    let mut tries = 0;
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(UblkError::os(format!("cannot open {path}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: Phase, evs: &[(Event, usize)]) -> (Phase, Vec<Effects>) {
        let mut p = start;
        let mut all = Vec::new();
        for (ev, q) in evs {
            let (n, fx) = p.apply(ev.clone(), *q);
            p = n;
            all.push(fx);
        }
        (p, all)
    }

    const ARMING: Phase = Phase::Arming {
        left: 2,
        failed: false,
        stop_asked: false,
    };

    #[test]
    fn start_run_stop_delete() {
        let (p, fx) = run(
            ARMING,
            &[
                (Event::QueueArmed(Ok(())), 1),
                (Event::QueueArmed(Ok(())), 2),
                (Event::Started(0), 2),
                (Event::Stop, 2),
                (Event::QueueDone, 1),
                (Event::StopDone(0), 1),
                (Event::QueueDone, 0),
                (Event::Deleted(0), 0),
            ],
        );
        assert!(!fx[0].start_dev && fx[1].start_dev);
        assert_eq!(fx[2].started, Some(Ok(())));
        assert!(fx[3].stop_dev);
        assert!(!fx[4].del_dev && !fx[5].del_dev, "a queue is still running");
        assert!(fx[6].del_dev);
        assert!(fx[7].finished);
        assert_eq!(p, Phase::Deleting);
    }

    #[test]
    fn failures_and_early_stops_answer_the_start_and_clean_up() {
        let (_, fx) = run(
            ARMING,
            &[(Event::QueueArmed(Err("x".into())), 0), (Event::QueueArmed(Ok(())), 1)],
        );
        assert!(matches!(fx[1].started, Some(Err(_))));
        assert!(fx[1].stop_dev && !fx[1].start_dev);
        let (p, fx) = run(
            ARMING,
            &[
                (Event::QueueArmed(Ok(())), 1),
                (Event::Stop, 1),
                (Event::QueueArmed(Ok(())), 2),
            ],
        );
        assert!(matches!(fx[2].started, Some(Err(_))) && fx[2].stop_dev);
        assert_eq!(p, Phase::Stopping { stop_done: false });
        let (_, fx) = run(Phase::Starting { stop_asked: false }, &[(Event::Started(-22), 1)]);
        assert!(fx[0]
            .started
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .contains("START_DEV"));
        let (_, fx) = run(
            Phase::Starting { stop_asked: false },
            &[(Event::Stop, 1), (Event::Started(0), 1)],
        );
        assert!(matches!(fx[1].started, Some(Err(_))) && fx[1].stop_dev);
        // StopDone after the last queue: DEL_DEV right then.
        let (p, fx) = run(
            Phase::Stopping { stop_done: false },
            &[(Event::QueueDone, 0), (Event::StopDone(0), 0)],
        );
        assert!(!fx[0].del_dev && fx[1].del_dev);
        assert_eq!(p, Phase::Deleting);
    }
}
