//! Subsystems and their namespaces: what `nvmf_create_subsystem` / `nvmf_subsystem_add_ns`
//! make. A [`Subsystem`] is shared (`Arc`) by the target's state, its controllers and their
//! qpairs; its configuration sits behind one mutex, changed by the control path on the main core
//! and read by admin commands (Identify, Get Log Page) and at Connect — never per I/O. I/O
//! qpairs keep their own table of namespace channels and rebuild it when the subsystem's
//! namespace generation ([`Subsystem::ns_generation`]) moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keel_bdev::{Channel, Descriptor, IoOp};

use crate::config::{ListenAddress, SubsystemOpts};

/// One namespace: a bdev served under an NSID. Created on the main core by `add_ns`; its
/// descriptor holds the bdev until the namespace is removed (then [`Namespace::release`]).
pub struct Namespace {
    /// The namespace id (1-based).
    pub nsid: u32,
    /// The bdev's name.
    pub bdev_name: String,
    /// The UUID reported in the namespace id descriptors.
    pub uuid: uuid::Uuid,
    /// The NGUID.
    pub nguid: [u8; 16],
    /// The EUI-64, if one was given.
    pub eui64: Option<[u8; 8]>,
    /// The bdev's block size (the LBA size).
    pub block_size: u32,
    /// The bdev's size in blocks (NSZE).
    pub num_blocks: u64,
    /// The bdev supports flush (else Flush and FUA complete at once).
    pub flush: bool,
    /// The bdev supports unmap (Dataset Management deallocate).
    pub unmap: bool,
    /// The bdev supports write zeroes.
    pub write_zeroes: bool,
    desc: Mutex<Option<Descriptor>>,
}

impl Namespace {
    /// Describes `desc`'s bdev as namespace `nsid` and holds the bdev. Main core.
    pub(crate) fn new(
        nsid: u32,
        uuid: uuid::Uuid,
        nguid: [u8; 16],
        eui64: Option<[u8; 8]>,
        nqn: &str,
        desc: Descriptor,
    ) -> Namespace {
        let info = desc.info().clone();
        desc.hold(format!("nvmf subsystem '{nqn}' namespace {nsid}"));
        Namespace {
            nsid,
            bdev_name: info.name.clone(),
            uuid,
            nguid,
            eui64,
            block_size: info.block_size,
            num_blocks: info.num_blocks,
            flush: info.caps.supports(IoOp::Flush),
            unmap: info.caps.supports(IoOp::Unmap),
            write_zeroes: info.caps.supports(IoOp::WriteZeroes),
            desc: Mutex::new(Some(desc)),
        }
    }

    /// This core's channel of the bdev (`None` once released). Called by an I/O qpair on its
    /// core when it (re)builds its namespace table.
    pub fn channel(&self) -> Option<Channel> {
        self.desc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|d| d.channel())
    }

    /// Drops the descriptor and with it the hold on the bdev. Main core.
    pub fn release(&self) {
        drop(self.desc.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// A subsystem's configuration (the control path's; see the module doc).
pub(crate) struct SubsysConf {
    pub opts: SubsystemOpts,
    /// Host NQNs allowed when `allow_any_host` is off, in the order added.
    pub hosts: Vec<String>,
    /// Namespaces by ascending NSID.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Listen addresses, in the order added.
    pub listeners: Vec<ListenAddress>,
}

/// An NVM subsystem, or the discovery subsystem (see the module doc).
pub struct Subsystem {
    /// Its NQN.
    pub nqn: String,
    /// True for the discovery subsystem (`nqn.2014-08.org.nvmexpress.discovery`).
    pub discovery: bool,
    conf: Mutex<SubsysConf>,
    ns_gen: AtomicU64,
}

impl Subsystem {
    pub(crate) fn new(nqn: String, discovery: bool, opts: SubsystemOpts) -> Subsystem {
        Subsystem {
            nqn,
            discovery,
            conf: Mutex::new(SubsysConf {
                opts,
                hosts: Vec::new(),
                namespaces: Vec::new(),
                listeners: Vec::new(),
            }),
            ns_gen: AtomicU64::new(0),
        }
    }

    pub(crate) fn conf(&self) -> MutexGuard<'_, SubsysConf> {
        self.conf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumped whenever a namespace is added or removed. Read by I/O qpairs once per command
    /// batch (one atomic load).
    pub fn ns_generation(&self) -> u64 {
        self.ns_gen.load(Ordering::Acquire)
    }

    pub(crate) fn bump_ns_generation(&self) {
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// The namespaces, by ascending NSID (a snapshot).
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.conf().namespaces.clone()
    }

    /// Namespace `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.conf().namespaces.iter().find(|n| n.nsid == nsid).cloned()
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let c = self.conf();
        self.discovery || c.opts.allow_any_host || c.hosts.iter().any(|h| h == hostnqn)
    }

    /// Whether a connection that arrived on `listen` may reach this subsystem (the discovery
    /// subsystem is reachable on every listener, as SPDK's).
    pub fn listens_on(&self, listen: &ListenAddress) -> bool {
        self.discovery || self.conf().listeners.iter().any(|l| l == listen)
    }

    /// The options (serial, model, …) in force.
    pub fn opts(&self) -> SubsystemOpts {
        self.conf().opts.clone()
    }
}
