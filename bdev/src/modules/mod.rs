//! Bdev modules that ship with the core.
//!
//! Each module has an options struct whose field names are SPDK's RPC parameter names (so RPC
//! and JSON config decode straight into it, unknown keys refused), a `create` that validates and
//! registers, a `delete`, and a backend implementing [`crate::BdevBackend`] whose `config()`
//! reproduces the creating RPC for save_config.

pub mod delay;
pub mod error;
pub mod malloc;
pub mod null;
pub mod passthru;
pub mod split;
mod stack;
pub mod uring;

use serde_json::Value;
use uuid::Uuid;

use crate::{BdevError, BdevRegistry};

/// Parses an optional UUID parameter.
pub fn parse_uuid(param: &'static str, text: Option<&str>) -> Result<Option<Uuid>, BdevError> {
    text.map(|t| Uuid::parse_str(t).map_err(|e| BdevError::invalid(param, format!("'{t}' is not a UUID: {e}"))))
        .transpose()
}

/// Deletes `name` if it belongs to `module`; `done` runs once the removal finished. The error is
/// `NotFound` for an unknown name or a bdev of another module (as SPDK's `*_delete`), and
/// [`BdevError::Held`] (EBUSY) while someone holds the bdev ([`crate::Descriptor::hold`]: an
/// export serving it), and `InUse` (EBUSY, naming the holders) while something must not lose it or a bdev its removal
/// takes along — a dm table naming it ([`BdevRegistry::check_removable`]); nothing changes then.
pub fn delete_of_module(
    reg: &BdevRegistry,
    module: &str,
    name: &str,
    done: impl FnOnce() + Send + 'static,
) -> Result<(), BdevError> {
    match reg.get(name) {
        Some(b) if b.info().module == module && b.name() == name => {
            let holders = b.holders();
            if !holders.is_empty() {
                return Err(BdevError::Held {
                    name: name.to_string(),
                    holders,
                });
            }
            reg.check_removable(name)?;
            reg.unregister(name, done)
        }
        _ => Err(BdevError::NotFound(name.to_string())),
    }
}

/// Refuses metadata/DIF options Keel does not implement, naming the parameter.
pub fn refuse_md(md_size: Option<u32>, dif_type: Option<i32>) -> Result<(), BdevError> {
    if md_size.unwrap_or(0) != 0 {
        return Err(BdevError::invalid(
            "md_size",
            "separate or interleaved metadata is not supported",
        ));
    }
    if dif_type.unwrap_or(0) != 0 {
        return Err(BdevError::invalid("dif_type", "DIF protection is not supported"));
    }
    Ok(())
}

/// `{"key": value, ...}` helper for config() output.
pub fn obj(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

#[cfg(test)]
mod tests {
    use keel_reactor::TestDriver;

    use super::malloc::{self, MallocOpts};
    use crate::{BdevError, BdevRegistry};

    #[test]
    fn a_held_bdev_is_not_deleted_until_the_hold_goes() {
        let d = TestDriver::new(1);
        let reg = BdevRegistry::new(d.cores());
        malloc::create(&reg, &MallocOpts::new("M0", 16, 512)).unwrap();
        let a = reg.open("M0", true, |_| {}).unwrap();
        let b = reg.open("M0", false, |_| {}).unwrap();
        a.hold("nbd export 'x'");
        b.hold("nbd export 'y'");
        // Not exclusive: others may still open it, for writing too.
        drop(reg.open("M0", true, |_| {}).unwrap());
        assert_eq!(reg.get("M0").unwrap().holders(), ["nbd export 'x'", "nbd export 'y'"]);
        let e = malloc::delete(&reg, "M0", || {}).unwrap_err();
        assert!(
            matches!(&e, BdevError::Held { holders, .. } if holders.len() == 2),
            "{e}"
        );
        assert_eq!(e.errno(), -libc::EBUSY);
        assert!(e.to_string().contains("nbd export 'x'"), "{e}");
        drop(a);
        assert_eq!(reg.get("M0").unwrap().holders(), ["nbd export 'y'"]);
        assert!(malloc::delete(&reg, "M0", || {}).is_err());
        drop(b);
        malloc::delete(&reg, "M0", || {}).unwrap();
        d.run_until_idle(100);
        assert!(reg.get("M0").is_none());
    }
}
