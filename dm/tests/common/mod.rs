//! Shared harness of the dm scenario tests: a [`Rig`] — keel-load's [`BdevRig`] (deterministic
//! reactors, a bdev registry, blocking helpers) plus the registry's dm registry — that runs dm's
//! asynchronous operations to completion. The I/O [`Client`] and the test-data helper are the
//! shared rig's. Test code: it allocates freely.
#![allow(dead_code)]

use std::ops::Deref;
use std::sync::mpsc;
use std::sync::Arc;

use keel_bdev::IoStatus;
use keel_dm::{CreateOpts, DmError, DmRegistry};
use keel_load::testing::{BdevRig, Reply};
// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use keel_load::testing::{buf_from_fn as pattern, Client, MAIN};

/// The shared rig and the dm registry of its bdev registry. Derefs to the [`BdevRig`]
/// (`r.d`, `r.reg`, `r.malloc(..)`, `r.client(..)`, ...).
pub struct Rig {
    pub base: BdevRig,
    pub dm: Arc<DmRegistry>,
}

impl Deref for Rig {
    type Target = BdevRig;

    fn deref(&self) -> &BdevRig {
        &self.base
    }
}

impl Rig {
    pub fn new(cores: u32) -> Rig {
        let base = BdevRig::new(cores);
        let dm = DmRegistry::of(&base.reg);
        Rig { base, dm }
    }

    /// Runs an asynchronous dm operation on the main core and turns the reactors until it
    /// answered.
    pub fn op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Arc<DmRegistry>, Reply<Result<T, DmError>>),
    ) -> Result<T, DmError> {
        self.base.call(MAIN, "dm operation", |done| f(&self.dm, done))
    }

    /// Starts an operation without waiting; the receiver gets its answer.
    pub fn start_op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Arc<DmRegistry>, Reply<Result<T, DmError>>),
    ) -> mpsc::Receiver<Result<T, DmError>> {
        self.base.start_call(MAIN, |done| f(&self.dm, done))
    }

    pub fn create(&self, name: &str, table: Option<&str>) -> Result<(), DmError> {
        let opts = CreateOpts {
            name: name.into(),
            table: table.map(String::from),
            ..Default::default()
        };
        self.op(|dm, done| dm.create(opts, done))
    }

    pub fn create_with(&self, opts: CreateOpts) -> Result<(), DmError> {
        self.op(|dm, done| dm.create(opts, done))
    }

    pub fn load(&self, name: &str, table: &str) -> Result<(), DmError> {
        self.d.enter(MAIN, || self.dm.load(name, table, false))
    }

    pub fn suspend(&self, name: &str, noflush: bool) -> Result<(), DmError> {
        let n = name.to_string();
        self.op(|dm, done| dm.suspend(&n, noflush, done))
    }

    pub fn resume(&self, name: &str) -> Result<(), DmError> {
        let n = name.to_string();
        self.op(|dm, done| dm.resume(&n, done))
    }

    pub fn remove(&self, name: &str, force: bool) -> Result<(), DmError> {
        let n = name.to_string();
        self.op(|dm, done| dm.remove(&n, force, done))
    }

    pub fn rename(&self, name: &str, new_name: &str) -> Result<(), DmError> {
        let (n, m) = (name.to_string(), new_name.to_string());
        self.op(|dm, done| dm.rename(&n, &m, done))
    }

    /// Reads `blocks` blocks of bdev `name` at `offset` (read-only descriptor, core 0).
    pub fn read_raw(&self, name: &str, offset: u64, blocks: u64) -> Vec<u8> {
        self.base.read(name, offset, blocks)
    }

    /// Writes `data` to bdev `name` at block `offset` (core 0; the bdev must be writable by us).
    pub fn write_raw(&self, name: &str, offset: u64, data: &[u8]) {
        assert_eq!(self.base.write(name, offset, data), IoStatus::Success, "write {name}");
    }
}
