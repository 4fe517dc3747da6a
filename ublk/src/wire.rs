//! The ublk driver's structures (`shared/specs/nbd-ublk.md` C2–C8, Linux 6.12
//! `uapi/linux/ublk_cmd.h`), encoded and decoded little-endian field by field with their sizes
//! asserted: `ublksrv_ctrl_cmd` (32 bytes), `ublksrv_ctrl_dev_info` (64), `ublk_params` (112),
//! `ublksrv_io_cmd` (16) and `ublksrv_io_desc` (24). Pure functions, any thread.
#![forbid(unsafe_code)]

/// Control opcodes, ioctl-encoded (`UBLK_U_CMD_*`; plain numbers need a legacy kernel option).
pub const CMD_GET_FEATURES: u32 = 0x8020_7513;
/// `UBLK_U_CMD_ADD_DEV`.
pub const CMD_ADD_DEV: u32 = 0xc020_7504;
/// `UBLK_U_CMD_DEL_DEV`.
pub const CMD_DEL_DEV: u32 = 0xc020_7505;
/// `UBLK_U_CMD_START_DEV`.
pub const CMD_START_DEV: u32 = 0xc020_7506;
/// `UBLK_U_CMD_STOP_DEV`.
pub const CMD_STOP_DEV: u32 = 0xc020_7507;
/// `UBLK_U_CMD_SET_PARAMS`.
pub const CMD_SET_PARAMS: u32 = 0xc020_7508;
/// `UBLK_U_CMD_GET_DEV_INFO`.
pub const CMD_GET_DEV_INFO: u32 = 0x8020_7502;
/// `UBLK_U_CMD_START_USER_RECOVERY`.
pub const CMD_START_USER_RECOVERY: u32 = 0xc020_7510;
/// `UBLK_U_CMD_END_USER_RECOVERY` (`data[0]` = the new server's pid; waits for every queue).
pub const CMD_END_USER_RECOVERY: u32 = 0xc020_7511;
/// `UBLK_U_IO_FETCH_REQ`.
pub const IO_FETCH_REQ: u32 = 0xc010_7520;
/// `UBLK_U_IO_COMMIT_AND_FETCH_REQ`.
pub const IO_COMMIT_AND_FETCH_REQ: u32 = 0xc010_7521;

/// `UBLK_F_URING_CMD_COMP_IN_TASK` (always on in 6.12).
pub const F_URING_CMD_COMP_IN_TASK: u64 = 1 << 1;
/// `UBLK_F_CMD_IOCTL_ENCODE`.
pub const F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
/// `UBLK_F_USER_RECOVERY`: the disk survives its server's death, quiesced, until a new server
/// recovers it (or deletes it).
pub const F_USER_RECOVERY: u64 = 1 << 3;
/// `UBLK_F_USER_RECOVERY_REISSUE`: with recovery, requests the dead server held are re-issued to
/// the new one instead of failed.
pub const F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
/// `ublksrv_ctrl_dev_info.state`: `UBLK_S_DEV_DEAD`, `_LIVE`, `_QUIESCED`.
pub const STATE_DEAD: u16 = 0;
/// Served.
pub const STATE_LIVE: u16 = 1;
/// Its server died; waiting for recovery.
pub const STATE_QUIESCED: u16 = 2;

/// `UBLK_IO_OP_*` of a request descriptor.
pub const OP_READ: u8 = 0;
/// WRITE.
pub const OP_WRITE: u8 = 1;
/// FLUSH.
pub const OP_FLUSH: u8 = 2;
/// DISCARD.
pub const OP_DISCARD: u8 = 3;
/// WRITE_ZEROES.
pub const OP_WRITE_ZEROES: u8 = 5;

/// Size of a request descriptor in the mmapped array.
pub const IO_DESC_BYTES: usize = 24;
/// Offset of queue `q`'s descriptor array in `/dev/ublkcN`: `q * round_up(4096 * 24, page)`.
pub fn iod_offset(q_id: u16, page_bytes: usize) -> u64 {
    let per_queue = (4096 * IO_DESC_BYTES).div_ceil(page_bytes) * page_bytes;
    u64::from(q_id) * per_queue as u64
}
/// Length of a queue's descriptor mapping: `round_up(depth * 24, page)`.
pub fn iod_len(depth: u16, page_bytes: usize) -> usize {
    (usize::from(depth) * IO_DESC_BYTES).div_ceil(page_bytes) * page_bytes
}

/// `ublksrv_ctrl_cmd`: the 32 bytes at the start of a control SQE's 80-byte command area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlCmd {
    /// Target device (`u32::MAX`: any, with ADD_DEV).
    pub dev_id: u32,
    /// `0xffff` unless a queue command.
    pub queue_id: u16,
    /// Length of the buffer at `addr`.
    pub len: u16,
    /// The buffer (in and/or out).
    pub addr: u64,
    /// Inline argument (START_DEV: the server's pid).
    pub data: u64,
}

impl CtrlCmd {
    /// The SQE128 command area (80 bytes; the structure's 32, then zeros).
    pub fn encode(&self) -> [u8; 80] {
        let mut b = [0u8; 80];
        b[0..4].copy_from_slice(&self.dev_id.to_le_bytes());
        b[4..6].copy_from_slice(&self.queue_id.to_le_bytes());
        b[6..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.data.to_le_bytes());
        // dev_path_len, pad, reserved: 0.
        b
    }
}

/// `ublksrv_ctrl_dev_info` (64 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevInfo {
    /// Queues.
    pub nr_hw_queues: u16,
    /// Tags per queue.
    pub queue_depth: u16,
    /// 0 dead, 1 live, 2 quiesced.
    pub state: u16,
    /// Largest request in bytes.
    pub max_io_buf_bytes: u32,
    /// The device id.
    pub dev_id: u32,
    /// The server's pid.
    pub ublksrv_pid: i32,
    /// `UBLK_F_*`.
    pub flags: u64,
}

/// Bytes of [`DevInfo`] on the wire.
pub const DEV_INFO_BYTES: usize = 64;

impl DevInfo {
    /// The 64 bytes.
    pub fn encode(&self) -> [u8; DEV_INFO_BYTES] {
        let mut b = [0u8; DEV_INFO_BYTES];
        b[0..2].copy_from_slice(&self.nr_hw_queues.to_le_bytes());
        b[2..4].copy_from_slice(&self.queue_depth.to_le_bytes());
        b[4..6].copy_from_slice(&self.state.to_le_bytes());
        b[8..12].copy_from_slice(&self.max_io_buf_bytes.to_le_bytes());
        b[12..16].copy_from_slice(&self.dev_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.ublksrv_pid.to_le_bytes());
        b[24..32].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Reads the 64 bytes the kernel wrote back.
    pub fn decode(b: &[u8; DEV_INFO_BYTES]) -> DevInfo {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        DevInfo {
            nr_hw_queues: u16_at(0),
            queue_depth: u16_at(2),
            state: u16_at(4),
            max_io_buf_bytes: u32_at(8),
            dev_id: u32_at(12),
            ublksrv_pid: u32_at(16) as i32,
            flags: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        }
    }
}

/// The parameters Keel sets (`ublk_params` with BASIC and, when the bdev unmaps, DISCARD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// `UBLK_ATTR_*` (bit 2 VOLATILE_CACHE: flushes arrive).
    pub attrs: u32,
    /// log2 of the logical block size.
    pub logical_bs_shift: u8,
    /// log2 of the physical block size.
    pub physical_bs_shift: u8,
    /// log2 of the optimal I/O size.
    pub io_opt_shift: u8,
    /// log2 of the minimal I/O size.
    pub io_min_shift: u8,
    /// Largest request in 512-byte sectors.
    pub max_sectors: u32,
    /// Capacity in 512-byte sectors.
    pub dev_sectors: u64,
    /// `Some(max sectors)`: discards are supported with the logical block size as granularity.
    pub discard_sectors: Option<u32>,
    /// Largest WRITE_ZEROES in sectors (0: none); sent only with the discard part.
    pub write_zeroes_sectors: u32,
}

/// Bytes of `ublk_params` in 6.12.
pub const PARAMS_BYTES: usize = 112;
/// `UBLK_ATTR_VOLATILE_CACHE`.
pub const ATTR_VOLATILE_CACHE: u32 = 1 << 2;
/// `UBLK_PARAM_TYPE_BASIC`.
const PARAM_TYPE_BASIC: u32 = 1;
/// `UBLK_PARAM_TYPE_DISCARD`.
const PARAM_TYPE_DISCARD: u32 = 2;

impl Params {
    /// The 112 bytes of SET_PARAMS.
    pub fn encode(&self) -> [u8; PARAMS_BYTES] {
        let mut b = [0u8; PARAMS_BYTES];
        b[0..4].copy_from_slice(&(PARAMS_BYTES as u32).to_le_bytes());
        let mut types = PARAM_TYPE_BASIC;
        // basic @8
        b[8..12].copy_from_slice(&self.attrs.to_le_bytes());
        b[12] = self.logical_bs_shift;
        b[13] = self.physical_bs_shift;
        b[14] = self.io_opt_shift;
        b[15] = self.io_min_shift;
        b[16..20].copy_from_slice(&self.max_sectors.to_le_bytes());
        // chunk_sectors @20: 0
        b[24..32].copy_from_slice(&self.dev_sectors.to_le_bytes());
        // virt_boundary_mask @32: 0
        if let Some(max) = self.discard_sectors {
            types |= PARAM_TYPE_DISCARD;
            // discard @40: alignment 0, granularity, max_discard_sectors, max_write_zeroes, segments
            let granularity = 1u32 << self.logical_bs_shift;
            b[44..48].copy_from_slice(&granularity.to_le_bytes());
            b[48..52].copy_from_slice(&max.to_le_bytes());
            b[52..56].copy_from_slice(&self.write_zeroes_sectors.to_le_bytes());
            b[56..58].copy_from_slice(&1u16.to_le_bytes());
        }
        b[4..8].copy_from_slice(&types.to_le_bytes());
        b
    }
}

/// `ublksrv_io_cmd` (16 bytes): an I/O command for one tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCmd {
    /// The queue.
    pub q_id: u16,
    /// The tag.
    pub tag: u16,
    /// COMMIT: bytes done, or a negative errno.
    pub result: i32,
    /// The tag's data buffer in this process.
    pub addr: u64,
}

impl IoCmd {
    /// The 16 bytes of the SQE's command area.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.q_id.to_le_bytes());
        b[2..4].copy_from_slice(&self.tag.to_le_bytes());
        b[4..8].copy_from_slice(&self.result.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b
    }
}

/// `ublksrv_io_desc` (24 bytes): what the kernel asks of a tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoDesc {
    /// `UBLK_IO_OP_*` (bits 0–7 of op_flags).
    pub op: u8,
    /// `UBLK_IO_F_*` (bits 8–31).
    pub flags: u32,
    /// Length in 512-byte sectors.
    pub nr_sectors: u32,
    /// Start in 512-byte sectors.
    pub start_sector: u64,
}

impl IoDesc {
    /// Decodes the 24 bytes.
    pub fn decode(b: &[u8; IO_DESC_BYTES]) -> IoDesc {
        let op_flags = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        IoDesc {
            op: (op_flags & 0xff) as u8,
            flags: op_flags >> 8,
            nr_sectors: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            start_sector: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layouts() {
        let c = CtrlCmd {
            dev_id: 7,
            queue_id: 0xffff,
            len: 64,
            addr: 0x1122_3344_5566_7788,
            data: 42,
        }
        .encode();
        assert_eq!(&c[0..4], &7u32.to_le_bytes());
        assert_eq!(&c[4..8], &[0xff, 0xff, 64, 0]);
        assert_eq!(&c[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&c[16..24], &42u64.to_le_bytes());
        assert!(c[24..].iter().all(|&x| x == 0));
        let io = IoCmd {
            q_id: 1,
            tag: 2,
            result: -5,
            addr: 0x1000,
        }
        .encode();
        assert_eq!(io, [1, 0, 2, 0, 0xfb, 0xff, 0xff, 0xff, 0, 0x10, 0, 0, 0, 0, 0, 0]);
        let p = Params {
            attrs: ATTR_VOLATILE_CACHE,
            logical_bs_shift: 12,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 12,
            max_sectors: 128,
            dev_sectors: 65536,
            discard_sectors: Some(32768),
            write_zeroes_sectors: 32768,
        }
        .encode();
        assert_eq!(&p[0..8], &[112, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&p[12..16], &[12, 12, 12, 12]);
        assert_eq!(&p[24..32], &65536u64.to_le_bytes());
        assert_eq!(&p[44..48], &4096u32.to_le_bytes());
        assert_eq!(&p[56..58], &[1, 0]);
        assert_eq!(iod_offset(1, 4096), 98304);
        assert_eq!(iod_len(128, 4096), 4096);
        assert_eq!(iod_len(1024, 4096), 24576);
    }

    proptest! {
        #[test]
        fn dev_info_round_trips(q in 1u16..4096, d in 1u16..4096, id in any::<u32>(), pid in any::<i32>(), flags in any::<u64>(), max in any::<u32>()) {
            let info = DevInfo { nr_hw_queues: q, queue_depth: d, state: 1, max_io_buf_bytes: max, dev_id: id, ublksrv_pid: pid, flags };
            prop_assert_eq!(DevInfo::decode(&info.encode()), info);
        }

        #[test]
        fn io_desc_fields(op in any::<u8>(), flags in 0u32..(1 << 24), n in any::<u32>(), start in any::<u64>()) {
            let mut b = [0u8; IO_DESC_BYTES];
            b[0..4].copy_from_slice(&(u32::from(op) | flags << 8).to_le_bytes());
            b[4..8].copy_from_slice(&n.to_le_bytes());
            b[8..16].copy_from_slice(&start.to_le_bytes());
            prop_assert_eq!(IoDesc::decode(&b), IoDesc { op, flags, nr_sectors: n, start_sector: start });
        }
    }
}
