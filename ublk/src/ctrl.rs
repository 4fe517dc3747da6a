//! `/dev/ublk-control`: the control commands as io_uring `URING_CMD`s on an SQE128 ring
//! (`shared/specs/nbd-ublk.md` C2–C4).
//!
//! Two rings, both owned by the target and used on the main core only: a **quick** one for the
//! commands that return at once (GET_FEATURES, ADD_DEV, SET_PARAMS), issued and waited for in
//! one call, and a **slow** one for the commands that wait on the reactors — START_DEV blocks
//! until every tag of every queue is fetched, STOP_DEV until the requests in flight are
//! answered, DEL_DEV until the last reference to the char device is gone — submitted and then
//! reaped by the target's control poller, so the main reactor keeps serving its queues
//! meanwhile. The kernel runs control commands on an io_uring worker either way.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::wire::{
    CtrlCmd, DevInfo, Params, CMD_ADD_DEV, CMD_GET_DEV_INFO, CMD_GET_FEATURES, CMD_SET_PARAMS, CMD_START_USER_RECOVERY,
    DEV_INFO_BYTES,
};

/// The control device path.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// One SQE128 ring on `/dev/ublk-control`.
pub(crate) struct CtrlRing {
    dev: File,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
}

impl CtrlRing {
    /// Opens the control device and a ring of `entries` SQEs. Main core.
    pub fn open(entries: u32) -> io::Result<CtrlRing> {
        let dev = OpenOptions::new().read(true).write(true).open(CONTROL_PATH)?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(entries)?;
        Ok(CtrlRing { dev, ring })
    }

    /// Queues one command and submits it. `cmd.addr`, when set, must stay valid until its
    /// completion is reaped (the quick calls wait for it; slow commands carry no buffer).
    fn push(&mut self, op: u32, cmd: &CtrlCmd, user_data: u64) -> io::Result<()> {
        let sqe = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), op)
            .cmd(cmd.encode())
            .build()
            .user_data(user_data);
        // SAFETY: the SQE names our open control device and, at most, the buffer at `cmd.addr`,
        // which the callers keep alive until the completion is reaped (see above).
        unsafe { self.ring.submission().push(&sqe) }.map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        self.ring.submit()?;
        Ok(())
    }

    /// Issues a quick command and waits for its result (≥ 0, or the negative errno as an
    /// error). Only quick commands go through here, and only on the quick ring.
    fn call(&mut self, op: u32, cmd: &CtrlCmd) -> io::Result<i32> {
        self.push(op, cmd, 0)?;
        self.ring.submit_and_wait(1)?;
        let cqe = self
            .ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("no completion"))?;
        if cqe.result() < 0 {
            Err(io::Error::from_raw_os_error(-cqe.result()))
        } else {
            Ok(cqe.result())
        }
    }

    /// Issues quick command `op` for `dev_id` with `buf` as its in/out buffer (`addr`/`len`)
    /// and waits for it; `buf` outlives the call, as the kernel's use of it.
    fn call_buf(&mut self, op: u32, dev_id: u32, buf: &mut [u8]) -> io::Result<i32> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: 0xffff,
            len: u16::try_from(buf.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            // No buffer: address 0, as the commands without one expect.
            addr: if buf.is_empty() { 0 } else { buf.as_mut_ptr() as u64 },
            data: 0,
        };
        self.call(op, &cmd)
    }

    /// GET_FEATURES: the `UBLK_F_*` the driver supports.
    pub fn get_features(&mut self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        self.call_buf(CMD_GET_FEATURES, u32::MAX, &mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    /// ADD_DEV: creates `/dev/ublkc{info.dev_id}`; returns what the kernel wrote back.
    pub fn add_dev(&mut self, info: &DevInfo) -> io::Result<DevInfo> {
        let mut buf = info.encode();
        self.call_buf(CMD_ADD_DEV, info.dev_id, &mut buf)?;
        Ok(DevInfo::decode(&buf))
    }

    /// GET_DEV_INFO of device `dev_id`: its queues, depth, state, flags and server pid.
    pub fn get_dev_info(&mut self, dev_id: u32) -> io::Result<DevInfo> {
        let mut buf = [0u8; DEV_INFO_BYTES];
        self.call_buf(CMD_GET_DEV_INFO, dev_id, &mut buf)?;
        Ok(DevInfo::decode(&buf))
    }

    /// START_USER_RECOVERY of device `dev_id`: needs a quiesced device whose old `/dev/ublkcN`
    /// is closed (EBUSY / EINVAL otherwise). Quick: the kernel only resets the queues.
    pub fn start_user_recovery(&mut self, dev_id: u32) -> io::Result<()> {
        self.call_buf(CMD_START_USER_RECOVERY, dev_id, &mut []).map(|_| ())
    }

    /// SET_PARAMS of device `dev_id` (before START_DEV).
    pub fn set_params(&mut self, dev_id: u32, params: &Params) -> io::Result<()> {
        let mut buf = params.encode();
        self.call_buf(CMD_SET_PARAMS, dev_id, &mut buf).map(|_| ())
    }

    /// Submits a slow command without a buffer (START_DEV or END_USER_RECOVERY with `data` =
    /// pid, STOP_DEV, DEL_DEV); its result comes from [`CtrlRing::reap`] with `user_data`.
    pub fn submit(&mut self, op: u32, dev_id: u32, data: u64, user_data: u64) -> io::Result<()> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: 0xffff,
            len: 0,
            addr: 0,
            data,
        };
        self.push(op, &cmd, user_data)
    }

    /// Completed slow commands: `(user_data, result)`.
    pub fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        for cqe in self.ring.completion() {
            out.push((cqe.user_data(), cqe.result()));
        }
    }
}
