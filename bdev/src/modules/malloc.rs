//! The malloc bdev: a RAM disk. Data lives in 64-bit words read and written with relaxed atomic
//! loads and stores, so every core can copy in and out without locks and without unsafe code
//! (racing writes to one block leave some mix of them, as on a real disk; the stack above
//! serialises what must be). 512 B and 4 KiB blocks (any power of two ≥ 512 works).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{delete_of_module, obj, parse_uuid, refuse_md};
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

/// Largest malloc bdev: what fits comfortably in this class of machine's memory.
const MAX_SIZE_BYTES: u64 = 16 << 30;

struct Storage {
    words: Box<[AtomicU64]>,
}

impl Storage {
    fn new(len_bytes: u64) -> Result<Storage, BdevError> {
        let n = (len_bytes / 8) as usize;
        let mut v: Vec<AtomicU64> = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| BdevError::invalid("num_blocks", format!("cannot allocate {len_bytes} bytes")))?;
        v.extend((0..n).map(|_| AtomicU64::new(0)));
        Ok(Storage {
            words: v.into_boxed_slice(),
        })
    }

    /// Copies `dst.len()` bytes starting at byte `pos` (8-aligned) out of the disk.
    #[inline]
    fn read(&self, pos: u64, dst: &mut [u8]) {
        let first = (pos / 8) as usize;
        let full_words = dst.len() / 8;
        let mut chunks = dst.chunks_exact_mut(8);
        for (w, chunk) in self.words[first..].iter().zip(&mut chunks) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let w = self.words[first + full_words].load(Ordering::Relaxed).to_le_bytes();
            tail.copy_from_slice(&w[..tail.len()]);
        }
    }

    /// Copies `src` into the disk at byte `pos` (8-aligned).
    #[inline]
    fn write(&self, pos: u64, src: &[u8]) {
        let first = (pos / 8) as usize;
        let mut chunks = src.chunks_exact(8);
        for (w, chunk) in self.words[first..].iter().zip(&mut chunks) {
            w.store(
                u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let w = &self.words[first + src.len() / 8];
            let mut b = w.load(Ordering::Relaxed).to_le_bytes();
            b[..tail.len()].copy_from_slice(tail);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    fn zero(&self, pos: u64, len: u64) {
        let first = (pos / 8) as usize;
        for w in &self.words[first..first + (len / 8) as usize] {
            w.store(0, Ordering::Relaxed);
        }
    }
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

/// Walks the scatter list over `len` bytes, calling `f(disk_pos, iovec, start, n)`. Segments
/// whose byte windows are not 8-aligned at a word boundary are handled by `Storage` tails; the
/// disk position of each segment start stays 8-aligned as long as segment lengths are multiples
/// of 8, which holds for block-sized windows (the only ones the stack builds).
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
        let pos = io.offset_blocks * self.block_size;
        let len = io.num_blocks * self.block_size;
        match io.op {
            IoOp::Read => for_each_segment(&io.iovs, pos, len, |p, v, start, n| {
                self.storage.read(p, &mut v.buf.bytes_mut()[start..start + n])
            }),
            IoOp::Write => for_each_segment(&io.iovs, pos, len, |p, v, start, n| {
                self.storage.write(p, &v.buf.bytes()[start..start + n])
            }),
            IoOp::Unmap | IoOp::WriteZeroes => self.storage.zero(pos, len),
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
/// Allocates and zeroes the memory now. Called on the main core.
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
        .filter(|&s| s <= MAX_SIZE_BYTES)
        .ok_or_else(|| {
            BdevError::invalid(
                "num_blocks",
                format!("size exceeds the {} GiB limit", MAX_SIZE_BYTES >> 30),
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
    let storage = Arc::new(Storage::new(size)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn storage_round_trips_any_aligned_window(pos_words in 0u64..64, len in 0usize..300, seed: u8) {
            let s = Storage::new(4096).unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            s.write(pos_words * 8, &data);
            let mut back = vec![0u8; len];
            s.read(pos_words * 8, &mut back);
            prop_assert_eq!(back, data);
        }
    }
}
