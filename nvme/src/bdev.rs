//! A namespace as a bdev: the backend names the controller's I/O device and the namespace; its
//! channel on a core is that core's qpair of the controller (shared by all its namespaces).

use std::sync::Weak;

use keel_bdev::{BackendChannel, BdevBackend, BdevInfo, ChannelCx, ConfigCall, IoBox, Submit};
use keel_reactor::{IoChannel, IoDevice};
use serde_json::{json, Value};

/// What a namespace bdev needs of its transport's controller (TCP's `Controller`, PCIe's
/// `PcieController`): its per-core queue type and the `driver_specific` view of a namespace.
pub(crate) trait NsController: Send + Sync + 'static {
    /// The controller's I/O queue on one core (the value of its I/O device's channel).
    type Queue: NsQueue;
    /// `driver_specific.nvme` of namespace `nsid`. Main core.
    fn ns_json(&self, nsid: u32) -> Value;
}

/// A controller's I/O queue on one core, shared by all its namespaces there.
pub(crate) trait NsQueue: 'static {
    /// Takes `io` for namespace `nsid` (blocks of `block_size` bytes), or hands it back.
    /// Called on the queue's core.
    fn submit(&self, nsid: u32, block_size: u32, io: IoBox) -> Submit;
}

/// The backend of namespace bdev `{ctrlr}n{nsid}` of a controller of transport `C`.
/// `Send + Sync`; recreated by the controller's attach (no per-bdev save_config call).
pub(crate) struct NsBdev<C: NsController> {
    ctrlr: Weak<C>,
    io_device: IoDevice<C::Queue>,
    nsid: u32,
    block_size: u32,
}

impl<C: NsController> NsBdev<C> {
    pub(crate) fn new(ctrlr: Weak<C>, io_device: IoDevice<C::Queue>, nsid: u32, block_size: u32) -> NsBdev<C> {
        NsBdev {
            ctrlr,
            io_device,
            nsid,
            block_size,
        }
    }
}

impl<C: NsController> BdevBackend for NsBdev<C> {
    fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(NsChannel {
            qpair: self.io_device.get_channel(),
            nsid: self.nsid,
            block_size: self.block_size,
        })
    }

    fn driver_specific(&self) -> Value {
        match self.ctrlr.upgrade() {
            Some(c) => json!({ "nvme": c.ns_json(self.nsid) }),
            None => json!({}),
        }
    }

    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }
}

/// A namespace bdev's channel on one core: hands requests to the core's queue.
struct NsChannel<Q: NsQueue> {
    qpair: IoChannel<Q>,
    nsid: u32,
    block_size: u32,
}

impl<Q: NsQueue> BackendChannel for NsChannel<Q> {
    #[inline]
    fn submit(&self, io: IoBox) -> Submit {
        self.qpair.rc().submit(self.nsid, self.block_size, io)
    }

    fn leaf(&self) -> bool {
        true
    }
}
