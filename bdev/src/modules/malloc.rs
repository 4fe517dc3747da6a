//! The malloc bdev: a RAM disk (512 B and 4 KiB blocks; any power of two ≥ 512 works).
//!
//! The data live in a [`Ram`] mapping: huge-page backed where the kernel offers transparent
//! huge pages, allocated by a background populator thread after creation (never by a fault on
//! a reactor once it is done; unwritten blocks read as zeros), and copied in and out with vector kernels that stay sound when several cores
//! touch the same block — racing writes to one block leave some mix of them, as on a real disk;
//! the stack above serialises what must be. `ram.rs` explains the memory and why the copies are
//! not data races. A request costs one copy per segment: no allocation, no lock.
//!
//! # What the machine can hold
//!
//! Creation maps the whole size at once but writes nothing, so it is fast at any size and
//! never stalls the main core; the memory is allocated afterwards, in the background. Because
//! it is not allocated at creation, creation first checks that the disk *can* be held: the sizes of every malloc bdev of the process, the new one
//! included, must fit in what the machine has available (`MemAvailable`, or the memory
//! cgroup's limit less its usage when that is lower) plus the anonymous memory the process
//! already holds (which covers what the existing disks have filled), less [`HEADROOM_BYTES`].
//! Otherwise creation fails with [`BdevError::NoMemory`] (`-ENOMEM` at the RPC edge) naming the
//! figures. Under strict overcommit (`vm.overcommit_memory = 2`) the kernel's own commit limit
//! also applies: the mapping then fails with `ENOMEM`.

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::json;

use super::{delete_of_module, obj, parse_uuid, refuse_md};
use crate::ram::Ram;
use crate::{
    BackendChannel, Bdev, BdevBackend, BdevError, BdevInfo, BdevParams, BdevRegistry, ChannelCx, ConfigCall, IoBox,
    IoCaps, IoOp, IoStatus, IoVec, Submit,
};

/// `bdev_malloc_create` parameters (SPDK names).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MallocOpts {
    /// Default: `Malloc<N>`, the first free N.
    #[serde(default)]
    pub name: Option<String>,
    pub num_blocks: u64,
    pub block_size: u32,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub optimal_io_boundary: Option<u32>,
    #[serde(default)]
    pub md_size: Option<u32>,
    #[serde(default)]
    pub md_interleave: Option<bool>,
    #[serde(default)]
    pub dif_type: Option<i32>,
    #[serde(default)]
    pub dif_is_head_of_md: Option<bool>,
    #[serde(default)]
    pub physical_block_size: Option<u32>,
    #[serde(default)]
    pub dif_pi_format: Option<u32>,
    #[serde(default)]
    pub numa_id: Option<i32>,
}

impl MallocOpts {
    /// Minimal options.
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> MallocOpts {
        serde_json::from_value(json!({"name": name, "num_blocks": num_blocks, "block_size": block_size}))
            .expect("valid malloc options")
    }
}

/// Module name.
pub const MODULE: &str = "malloc";

/// Memory left to the rest of the process and the system when every malloc bdev is full: the
/// budget check (module docs) refuses a disk that would leave less.
pub const HEADROOM_BYTES: u64 = 256 << 20;

/// A disk's memory and its share of the process's malloc budget, released together when the
/// last channel or backend holding it drops.
struct Storage {
    ram: Ram,
    _reservation: Reservation,
}

struct MallocBackend {
    storage: Arc<Storage>,
    block_size: u64,
    physical_block_size: u32,
    optimal_io_boundary: u32,
}

struct MallocChannel {
    storage: Arc<Storage>,
    block_size: u64,
}

/// Walks the scatter list over `len` bytes from disk byte `disk_pos`, calling
/// `f(disk_pos, iovec, start, n)` for each segment's part.
#[inline(always)]
fn for_each_segment(iovs: &[IoVec], mut disk_pos: u64, mut len: u64, mut f: impl FnMut(u64, &IoVec, usize, usize)) {
    for v in iovs {
        if len == 0 {
            break;
        }
        let n = (v.len_bytes as u64).min(len) as usize;
        f(disk_pos, v, v.offset_bytes as usize, n);
        disk_pos += n as u64;
        len -= n as u64;
    }
}

impl BackendChannel for MallocChannel {
    fn submit(&self, io: IoBox) -> Submit {
        let ram = &self.storage.ram;
        let pos = io.offset_blocks * self.block_size;
        let len = io.num_blocks * self.block_size;
        match io.op {
            IoOp::Read => for_each_segment(&io.iovs, pos, len, |p, v, start, n| {
                ram.read(p, &mut v.buf.bytes_mut()[start..start + n])
            }),
            IoOp::Write => for_each_segment(&io.iovs, pos, len, |p, v, start, n| {
                ram.write(p, &v.buf.bytes()[start..start + n])
            }),
            IoOp::Unmap | IoOp::WriteZeroes => ram.zero(pos, len),
            IoOp::Flush | IoOp::Reset => {}
        }
        io.complete(IoStatus::Success);
        Submit::Accepted
    }

    fn leaf(&self) -> bool {
        true
    }
}

impl BdevBackend for MallocBackend {
    fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(MallocChannel {
            storage: self.storage.clone(),
            block_size: self.block_size,
        })
    }

    fn config(&self, info: &BdevInfo) -> Option<ConfigCall> {
        Some(ConfigCall {
            method: "bdev_malloc_create",
            params: obj([
                ("name", json!(info.name)),
                ("num_blocks", json!(info.num_blocks)),
                ("block_size", json!(info.block_size)),
                ("physical_block_size", json!(self.physical_block_size)),
                ("uuid", json!(info.uuid.to_string())),
                ("optimal_io_boundary", json!(self.optimal_io_boundary)),
            ]),
        })
    }
}

/// Creates a malloc bdev; returns it (its name is the default `Malloc<N>` when none given).
/// Maps its memory now, without touching it (fast at any size); refuses a size the machine
/// could not hold once written ([`BdevError::NoMemory`], module docs). Called on the main core.
pub fn create(reg: &BdevRegistry, opts: &MallocOpts) -> Result<Arc<Bdev>, BdevError> {
    refuse_md(opts.md_size, opts.dif_type)?;
    let bs = opts.block_size;
    if bs < 512 || !bs.is_power_of_two() {
        return Err(BdevError::invalid(
            "block_size",
            format!("{bs} is not a power of two of at least 512"),
        ));
    }
    if opts.num_blocks == 0 {
        return Err(BdevError::invalid("num_blocks", "must be greater than 0"));
    }
    let size = opts
        .num_blocks
        .checked_mul(bs as u64)
        .filter(|&s| usize::try_from(s).is_ok())
        .ok_or_else(|| {
            BdevError::invalid(
                "num_blocks",
                format!("{} blocks of {bs} bytes exceed the address space", opts.num_blocks),
            )
        })?;
    let physical_block_size = opts.physical_block_size.unwrap_or(bs);
    if physical_block_size < bs || !physical_block_size.is_power_of_two() {
        return Err(BdevError::invalid(
            "physical_block_size",
            format!("{physical_block_size} must be a power of two not below block_size"),
        ));
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => (0..)
            .map(|i| format!("Malloc{i}"))
            .find(|n| reg.get(n).is_none())
            .expect("a free name"),
    };
    let uuid = parse_uuid("uuid", opts.uuid.as_deref())?;
    if reg.get(&name).is_some() {
        return Err(BdevError::Exists(name));
    }
    let reservation = reserve(size)?;
    let ram = Ram::new(size as usize)
        .map_err(|e| BdevError::NoMemory(format!("cannot map {size} bytes for malloc bdev '{name}': {e}")))?;
    tracing::info!(
        name,
        size_bytes = size,
        pages = ram.pages().name(),
        copy = ram.kernel_name(),
        "malloc bdev memory mapped"
    );
    let storage = Arc::new(Storage {
        ram,
        _reservation: reservation,
    });
    reg.register(
        BdevParams {
            name,
            uuid,
            product_name: "Malloc disk",
            module: MODULE,
            block_size: bs,
            num_blocks: opts.num_blocks,
            caps: IoCaps::ALL,
            optimal_io_boundary_blocks: opts.optimal_io_boundary.unwrap_or(0),
        },
        Arc::new(MallocBackend {
            storage,
            block_size: bs as u64,
            physical_block_size,
            optimal_io_boundary: opts.optimal_io_boundary.unwrap_or(0),
        }),
    )
}

/// Deletes a malloc bdev (hot removal; memory is freed when the last channel closes).
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    delete_of_module(reg, MODULE, name, done)
}

// ---------------------------------------------------------------------------------------------
// The process's malloc budget (module docs)
// ---------------------------------------------------------------------------------------------

/// Bytes of malloc bdevs this process holds, over all registries.
static RESERVED_BYTES: Mutex<u64> = Mutex::new(0);

/// One disk's share of [`RESERVED_BYTES`], given back when dropped.
struct Reservation(u64);

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = RESERVED_BYTES.lock().unwrap_or_else(|e| e.into_inner());
        *r = r.saturating_sub(self.0);
    }
}

/// Reserves `size` bytes of the budget, or explains why they do not fit. Control path.
fn reserve(size: u64) -> Result<Reservation, BdevError> {
    let mut reserved = RESERVED_BYTES.lock().unwrap_or_else(|e| e.into_inner());
    match Capacity::now() {
        Some(cap) => cap.check(size, *reserved).map_err(BdevError::NoMemory)?,
        None => tracing::warn!(
            size,
            "cannot read the machine's available memory; malloc size not checked"
        ),
    }
    *reserved += size;
    Ok(Reservation(size))
}

/// What the process could still fill with malloc disks.
#[derive(Debug, Clone, PartialEq)]
struct Capacity {
    /// Memory available to the process now: `MemAvailable`, or the memory cgroup's room when
    /// that is less.
    available_bytes: u64,
    /// Where `available_bytes` comes from (for the error).
    source: &'static str,
    /// Anonymous memory the process holds now (`RssAnon`): what existing disks have filled is
    /// part of it.
    held_bytes: u64,
}

impl Capacity {
    /// Reads `/proc/meminfo`, `/proc/self/status` and the memory cgroup; `None` when the
    /// kernel's figures cannot be read.
    fn now() -> Option<Capacity> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mut cap = Capacity {
            available_bytes: kib_field(&meminfo, "MemAvailable:")? << 10,
            source: "MemAvailable",
            held_bytes: kib_field(&status, "RssAnon:").unwrap_or(0) << 10,
        };
        if let Some(room) = cgroup_room_bytes() {
            if room < cap.available_bytes {
                cap.available_bytes = room;
                cap.source = "the memory cgroup's limit less its usage";
            }
        }
        Some(cap)
    }

    /// Whether `size` more bytes fit next to `reserved` (module docs); the error text names
    /// every figure.
    fn check(&self, size: u64, reserved: u64) -> Result<(), String> {
        let limit = (self.available_bytes + self.held_bytes).saturating_sub(HEADROOM_BYTES);
        if reserved.saturating_add(size) <= limit {
            return Ok(());
        }
        Err(format!(
            "a malloc bdev of {} does not fit: malloc bdevs of this process already take {}, \
             and at most {} can be held ({} available ({}) + {} held by this process - {} headroom)",
            mib(size),
            mib(reserved),
            mib(limit),
            mib(self.available_bytes),
            self.source,
            mib(self.held_bytes),
            mib(HEADROOM_BYTES),
        ))
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// The value of a `Key:   N kB` line.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The memory cgroup's room (limit - usage + page cache) if the process's cgroup has a limit:
/// cgroup v2 (`memory.max`, `memory.current`, `file` of `memory.stat`) or v1
/// (`memory.limit_in_bytes`, `memory.usage_in_bytes`, `total_cache`).
fn cgroup_room_bytes() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |path: String| std::fs::read_to_string(path).ok();
    let stat_field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (dir, limit_file, usage_file, cache_key) = if controllers.is_empty() {
            (format!("/sys/fs/cgroup{path}"), "memory.max", "memory.current", "file ")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                format!("/sys/fs/cgroup/memory{path}"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_cache ",
            )
        } else {
            continue;
        };
        let Some(limit) = read(format!("{dir}/{limit_file}")).and_then(|t| t.trim().parse::<u64>().ok()) else {
            continue;
        };
        // v1 reports "no limit" as a huge page-aligned number.
        if limit >= 1 << 60 {
            continue;
        }
        let usage = read(format!("{dir}/{usage_file}"))
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let cache = read(format!("{dir}/memory.stat")).map_or(0, |t| stat_field(&t, cache_key));
        return Some(limit.saturating_sub(usage) + cache.min(usage));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn budget_counts_every_disk_against_available_plus_held_memory() {
        let cap = Capacity {
            available_bytes: 20 * GIB,
            source: "MemAvailable",
            held_bytes: 4 * GIB,
        };
        // 24 GiB - 256 MiB headroom can be held in all.
        assert_eq!(cap.check(16 * GIB, 0), Ok(()));
        assert_eq!(cap.check(8 * GIB - HEADROOM_BYTES, 16 * GIB), Ok(()));
        let e = cap.check(8 * GIB, 16 * GIB).unwrap_err();
        assert!(
            e.contains("8192 MiB does not fit")
                && e.contains("already take 16384 MiB")
                && e.contains("20480 MiB available (MemAvailable)"),
            "{e}"
        );
        assert!(cap.check(u64::MAX, 1).is_err(), "no overflow");
    }

    #[test]
    fn proc_fields_parse() {
        let meminfo = "MemTotal:       24683772 kB\nMemFree:  1 kB\nMemAvailable:   23797428 kB\n";
        assert_eq!(kib_field(meminfo, "MemAvailable:"), Some(23797428));
        assert_eq!(kib_field(meminfo, "RssAnon:"), None);
        let now = Capacity::now().expect("Linux reports its memory");
        assert!(now.available_bytes > 0);
    }
}
