//! One export ([`Export`]: a bdev served under a name, held open for as long as it is exported)
//! and the catalog of exports a handshake answers from ([`Catalog`]).
//!
//! An `Export` is created and dropped on the main core by the server's control path; the
//! connections that serve it (on any core) share it through an `Arc` and build their bdev
//! channel from its descriptor when they enter transmission. A `Catalog` is an immutable
//! snapshot rebuilt on the main core whenever the exports change; each new connection takes the
//! current one (its handshake is bounded in time, so a snapshot is never old for long) and finds
//! the live export again when the negotiation ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use keel_bdev::{BdevInfo, Channel, Descriptor, IoOp};

use crate::export::{BlockSizes, Capabilities, ExportCatalog, ExportInfo};

/// A bdev exported under a name.
pub(crate) struct Export {
    /// What the handshake announces.
    pub info: ExportInfo,
    /// The bdev's name.
    pub bdev_name: String,
    /// The bdev's block size (requests are validated against it in bytes, then converted).
    pub block_size: u32,
    /// The bdev supports flush: FLUSH and FUA go to it (otherwise a completed write is already
    /// as durable as the bdev makes anything, and both are answered at once).
    pub flush: bool,
    /// The descriptor that holds the bdev (open, and [`Descriptor::hold`]), until the export's
    /// removal completes.
    desc: Mutex<Option<Descriptor>>,
    /// Removal started (RPC, server stop, bdev hot removal): no new connection may attach.
    gone: AtomicBool,
}

impl Export {
    /// Describes `desc`'s bdev as export `name` and holds the bdev for `holder` (what the bdev
    /// layer names when it refuses a delete: `nbd export 'disk0'`, `nbd disk /dev/nbd0`).
    /// Main core.
    pub fn new(
        name: String,
        description: String,
        read_only: bool,
        desc: Descriptor,
        holder: String,
    ) -> Result<Export, crate::NbdError> {
        let export_info = Export::describe(name, description, read_only, desc.info())?;
        let info = desc.info();
        desc.hold(holder);
        Ok(Export {
            info: export_info,
            bdev_name: info.name.clone(),
            block_size: info.block_size,
            flush: info.caps.supports(IoOp::Flush),
            desc: Mutex::new(Some(desc)),
            gone: AtomicBool::new(false),
        })
    }

    /// What the handshake would announce for bdev `info` exported as `name`: sizes and
    /// capabilities (hence transmission flags). Any thread.
    pub fn describe(
        name: String,
        description: String,
        read_only: bool,
        info: &BdevInfo,
    ) -> Result<ExportInfo, crate::NbdError> {
        let optimal = info.optimal_io_boundary_blocks.saturating_mul(info.block_size);
        let sizes = BlockSizes::for_block_device(info.block_size, optimal)?;
        let write_zeroes = info.caps.supports(IoOp::WriteZeroes);
        let caps = Capabilities {
            // FLUSH and FUA are always honoured (see `flush`).
            flush: true,
            fua: true,
            trim: info.caps.supports(IoOp::Unmap),
            write_zeroes,
            // Every Keel bdev that has write_zeroes zeroes natively (memset, fallocate, a
            // layer passing it down): never slower than writing zeroes.
            fast_zero: write_zeroes,
            cache: true,
            multi_conn: true,
            rotational: false,
        };
        ExportInfo::new(name, description, info.size_bytes(), read_only, sizes, caps)
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        self.info.name()
    }

    /// Whether removal started.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Marks removal as started. Main core, under the server's state lock.
    pub fn set_gone(&self) {
        self.gone.store(true, Ordering::Release);
    }

    /// This core's bdev channel, `None` once the descriptor was released. Called on the
    /// connection's core when it enters transmission.
    pub fn channel(&self) -> Option<Channel> {
        self.desc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|d| d.channel())
    }

    /// Releases the descriptor (and with it the hold): the last step of removal, once no
    /// connection serves the export. Main core.
    pub fn release(&self) {
        drop(self.desc.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// The exports as one handshake sees them: descriptions for the protocol core, and a weak link
/// back to each live export.
pub(crate) struct Catalog {
    infos: Vec<ExportInfo>,
    exports: Vec<Weak<Export>>,
}

impl Catalog {
    /// A snapshot of `exports` (those not being removed), in order. Main core.
    pub fn of(exports: &[Arc<Export>]) -> Catalog {
        let live = exports.iter().filter(|e| !e.is_gone());
        let (infos, exports) = live.map(|e| (e.info.clone(), Arc::downgrade(e))).unzip();
        Catalog { infos, exports }
    }

    /// The live export the negotiation chose (by its canonical name), if it still exists.
    pub fn resolve(&self, name: &str) -> Option<Arc<Export>> {
        let i = self.infos.iter().position(|e| e.name() == name)?;
        self.exports[i].upgrade().filter(|e| !e.is_gone())
    }
}

impl ExportCatalog for Catalog {
    fn find(&self, name: &str) -> Option<&ExportInfo> {
        self.infos.as_slice().find(name)
    }

    fn for_each(&self, visit: &mut dyn FnMut(&ExportInfo)) {
        self.infos.as_slice().for_each(visit)
    }
}
