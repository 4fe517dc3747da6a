//! Shared harness of the md scenario tests: a [`Rig`] — keel-load's [`BdevRig`] (deterministic
//! reactors, a bdev registry, blocking helpers, raw block I/O on any bdev) plus the registry's md
//! registry — that runs md's asynchronous operations to completion. Test code: it allocates
//! freely.
#![allow(dead_code)]

use std::ops::Deref;
use std::sync::Arc;

use keel_load::testing::BdevRig;
// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use keel_load::testing::{xorshift_bytes as pattern, MAIN};
use keel_md::{CreateOpts, MdError, MdRegistry};

/// The shared rig and the md registry of its bdev registry. Derefs to the [`BdevRig`]
/// (`r.d`, `r.reg`, `r.malloc(..)`, `r.read(..)`, `r.write(..)`, `r.run_for_ms(..)`, ...).
pub struct Rig {
    pub base: BdevRig,
    pub md: Arc<MdRegistry>,
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
        let md = MdRegistry::of(&base.reg);
        Rig { base, md }
    }

    /// `md_assemble` on the main core, run to its answer (the array's name).
    pub fn assemble(&self, opts: keel_md::AssembleOpts) -> Result<String, MdError> {
        self.base
            .call(MAIN, "md operation", |done| self.md.assemble(opts, done))
    }

    /// `md_add` on the main core, run to its answer.
    pub fn add(&self, name: &str, bdev: &str) -> Result<(), MdError> {
        self.base
            .call(MAIN, "md operation", |done| self.md.add(name, bdev, done))
    }

    /// The v1.2 superblock on bdev `member` (4 KiB in).
    pub fn superblock(&self, member: &str) -> keel_md::superblock::Superblock {
        use keel_md::superblock::{Superblock, V1_2_SUPER_OFFSET_SECTORS};
        Superblock::decode(&self.read_bytes(member, 4096, 4096), V1_2_SUPER_OFFSET_SECTORS).unwrap()
    }

    pub fn create(&self, opts: CreateOpts) -> Result<(), MdError> {
        self.base.call(MAIN, "md operation", |done| self.md.create(opts, done))
    }

    pub fn create_simple(
        &self,
        name: &str,
        level: &str,
        members: &[&str],
        chunk_kb: Option<u32>,
    ) -> Result<(), MdError> {
        self.create(CreateOpts {
            name: name.into(),
            level: level.into(),
            members: members.iter().map(|s| s.to_string()).collect(),
            chunk_kb,
            assume_clean: true,
            ..Default::default()
        })
    }

    pub fn stop(&self, name: &str) -> Result<(), MdError> {
        self.base.call(MAIN, "md operation", |done| self.md.stop(name, done))
    }

    /// Turns the reactors until `cond` holds (panics after `secs` seconds).
    pub fn wait_until(&self, secs: u64, what: &str, mut cond: impl FnMut(&Rig) -> bool) {
        self.base.turn_until(secs, what, || cond(self))
    }

    /// The array `name` as md_get_arrays shows it.
    pub fn array(&self, name: &str) -> keel_md::ArrayInfo {
        self.md.arrays(Some(name)).unwrap().remove(0)
    }
}
