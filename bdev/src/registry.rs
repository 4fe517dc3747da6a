//! The bdev registry: names, aliases and UUIDs → bdevs; open, claim and hot removal.

use std::sync::{Arc, Mutex};

use keel_reactor::{try_current, Cores};
use uuid::Uuid;

use crate::bdev::{BdevBackend, BdevEvent, EventFn};
use crate::{Bdev, BdevError, BdevInfo, BdevParams, Descriptor};

/// All bdevs of one Keel instance. Control-path object (`Send + Sync`, internally locked):
/// called on the main core by RPC and by modules; never on the data path.
pub struct BdevRegistry {
    cores: Cores,
    bdevs: Mutex<Vec<Arc<Bdev>>>,
}

/// Longest bdev name accepted (SPDK has no hard limit; this keeps names printable in reports).
const MAX_NAME_LEN: usize = 255;

impl BdevRegistry {
    /// An empty registry whose removal notices travel over `cores`.
    pub fn new(cores: Cores) -> Arc<BdevRegistry> {
        Arc::new(BdevRegistry {
            cores,
            bdevs: Mutex::new(Vec::new()),
        })
    }

    /// The reactors this registry's bdevs run on.
    pub fn cores(&self) -> &Cores {
        &self.cores
    }

    /// Registers a bdev built by a module. Fails on an empty or duplicate name/UUID, a block size
    /// that is not a power of two ≥ 512 (or 520.. for md formats: not supported), or zero blocks.
    pub fn register(&self, params: BdevParams, backend: Arc<dyn BdevBackend>) -> Result<Arc<Bdev>, BdevError> {
        validate_name(&params.name)?;
        if params.block_size < 512 || !params.block_size.is_power_of_two() {
            return Err(BdevError::invalid(
                "block_size",
                format!("{} is not a power of two of at least 512", params.block_size),
            ));
        }
        if params.num_blocks == 0 {
            return Err(BdevError::invalid("num_blocks", "must be greater than 0"));
        }
        let uuid = params.uuid.unwrap_or_else(Uuid::new_v4);
        let mut bdevs = self.bdevs.lock().unwrap();
        for b in bdevs.iter() {
            if b.name() == params.name || b.aliases().contains(&params.name) {
                return Err(BdevError::Exists(params.name));
            }
            if b.info().uuid == uuid {
                return Err(BdevError::Exists(uuid.to_string()));
            }
        }
        let info = BdevInfo {
            name: params.name,
            uuid,
            product_name: params.product_name,
            module: params.module,
            block_size: params.block_size,
            num_blocks: params.num_blocks,
            caps: params.caps,
            optimal_io_boundary_blocks: params.optimal_io_boundary_blocks,
        };
        let bdev = Bdev::new(info, backend);
        bdevs.push(bdev.clone());
        tracing::debug!(name = bdev.name(), "bdev registered");
        Ok(bdev)
    }

    /// Looks a bdev up by name, alias or UUID string.
    pub fn get(&self, name: &str) -> Option<Arc<Bdev>> {
        let bdevs = self.bdevs.lock().unwrap();
        let found = bdevs
            .iter()
            .find(|b| b.name() == name)
            .or_else(|| bdevs.iter().find(|b| b.aliases().iter().any(|a| a == name)))
            .or_else(|| {
                let u = Uuid::parse_str(name).ok()?;
                bdevs.iter().find(|b| b.info().uuid == u)
            });
        found.cloned()
    }

    /// Every registered bdev in registration order (dependencies before dependents).
    pub fn list(&self) -> Vec<Arc<Bdev>> {
        self.bdevs.lock().unwrap().clone()
    }

    /// Adds an alias.
    pub fn add_alias(&self, name: &str, alias: &str) -> Result<(), BdevError> {
        validate_name(alias)?;
        if self.get(alias).is_some() {
            return Err(BdevError::Exists(alias.to_string()));
        }
        let b = self.get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        b.aliases.lock().unwrap().push(alias.to_string());
        Ok(())
    }

    /// Opens a bdev. `on_event` runs on the calling core (by message) when the bdev is being
    /// removed; off a reactor it runs on the thread that removes the bdev.
    pub fn open(
        &self,
        name: &str,
        writable: bool,
        on_event: impl Fn(BdevEvent) + Send + Sync + 'static,
    ) -> Result<Descriptor, BdevError> {
        let bdev = self.get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        let id = bdev.add_opener(writable, Arc::new(on_event) as EventFn)?;
        Ok(Descriptor::new(bdev, writable, id))
    }

    /// Hot-removes a bdev: it leaves the registry at once (its name is free again), new I/O to it
    /// fails with `Removed`, every channel aborts what it can, every opener gets
    /// [`BdevEvent::Remove`] on its core, and when all that ran the module's `on_unregister`
    /// follows. `done` runs after that (on the main core). Returns at once.
    pub fn unregister(&self, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
        let bdev = {
            let mut bdevs = self.bdevs.lock().unwrap();
            let pos = bdevs
                .iter()
                .position(|b| b.name() == name)
                .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
            bdevs.remove(pos)
        };
        bdev.core.removed.store(true, std::sync::atomic::Ordering::Release);
        tracing::debug!(name, "bdev unregistering");
        let openers: Vec<(Option<keel_reactor::CoreId>, EventFn)> = bdev
            .openers
            .lock()
            .unwrap()
            .iter()
            .map(|o| (o.core, o.on_event.clone()))
            .collect();
        for (core, cb) in openers {
            match core {
                Some(c) => {
                    if self.cores.run_on(c, move || cb(BdevEvent::Remove)).is_err() {
                        tracing::warn!(core = c.0, "cannot deliver remove event");
                    }
                }
                None => cb(BdevEvent::Remove),
            }
        }
        let origin = try_current()
            .map(|r| r.core())
            .unwrap_or_else(|| self.cores.main_core());
        let b2 = bdev.clone();
        self.cores.for_each_core(
            move || {
                if let Some(ch) = b2.io_device.existing_channel() {
                    ch.abort_all();
                }
            },
            origin,
            move || {
                bdev.core.backend.on_unregister();
                done();
            },
        );
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), BdevError> {
    if name.is_empty() {
        return Err(BdevError::invalid("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(BdevError::invalid("name", format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(BdevError::invalid("name", "contains whitespace or control characters"));
    }
    Ok(())
}
