//! A namespace as a bdev: the backend names the controller's I/O device and the namespace; its
//! channel on a core is that core's qpair of the controller (shared by all its namespaces).

use std::sync::Weak;

use keel_bdev::{BackendChannel, BdevBackend, BdevInfo, ChannelCx, ConfigCall, IoBox, Submit};
use keel_reactor::{IoChannel, IoDevice};
use serde_json::{json, Value};

use crate::ctrlr::Controller;
use crate::tcp::qpair::QpairCell;

/// The backend of namespace bdev `{ctrlr}n{nsid}`. `Send + Sync`; recreated by the
/// controller's attach (no per-bdev save_config call).
pub(crate) struct NsBdev {
    ctrlr: Weak<Controller>,
    io_device: IoDevice<QpairCell>,
    nsid: u32,
    block_size: u32,
}

impl NsBdev {
    pub(crate) fn new(ctrlr: Weak<Controller>, io_device: IoDevice<QpairCell>, nsid: u32, block_size: u32) -> NsBdev {
        NsBdev {
            ctrlr,
            io_device,
            nsid,
            block_size,
        }
    }
}

impl BdevBackend for NsBdev {
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

/// A namespace bdev's channel on one core: hands requests to the core's qpair.
struct NsChannel {
    qpair: IoChannel<QpairCell>,
    nsid: u32,
    block_size: u32,
}

impl BackendChannel for NsChannel {
    #[inline]
    fn submit(&self, io: IoBox) -> Submit {
        self.qpair.rc().submit(self.nsid, self.block_size, io)
    }

    fn leaf(&self) -> bool {
        true
    }
}
