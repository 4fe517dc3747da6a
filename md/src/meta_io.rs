//! Metadata I/O on member bdevs: read or write whole blocks at byte offsets, asynchronously,
//! from a reactor. Control path only (superblocks, bitmaps): each call allocates its buffer and
//! request, and completes through a short-lived poller, never on the caller's stack.

use std::cell::RefCell;
use std::rc::Rc;

use keel_bdev::{Channel, CompletionQueue, DmaBuf, IoOp, IoRequest, IoStatus, IoVec, Submit};
use keel_reactor::{current, PollStatus, PollerHandle};

/// Result of a metadata read: the bytes, or the I/O status that failed it.
pub type ReadResult = Result<Vec<u8>, IoStatus>;

fn start(
    channel: &Channel,
    op: IoOp,
    offset_bytes: u64,
    buf: DmaBuf,
    done: Box<dyn FnOnce(IoStatus, DmaBuf)>,
) -> Result<(), IoStatus> {
    let info = channel.info();
    let bs = info.block_size as u64;
    let len = buf.len() as u64;
    if !offset_bytes.is_multiple_of(bs) || !len.is_multiple_of(bs) || len == 0 {
        return Err(IoStatus::InvalidRange);
    }
    let cq = CompletionQueue::with_capacity(1);
    let mut io = IoRequest::new_boxed();
    io.iovs.push(IoVec::whole(buf.clone()));
    io.prepare(op, offset_bytes / bs, len / bs);
    if let Submit::Requeue(_) = channel.submit(io, &cq) {
        return Err(IoStatus::Failed);
    }
    // Poll for the single completion, then unregister.
    let handle: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
    let h2 = handle.clone();
    let mut done = Some(done);
    let h = current().register_poller("md_meta_io", move || match cq.pop() {
        Some(io) => {
            if let Some(d) = done.take() {
                d(io.status(), buf.clone());
            }
            h2.borrow_mut().take();
            PollStatus::Busy
        }
        None => PollStatus::Idle,
    });
    *handle.borrow_mut() = Some(h);
    Ok(())
}

/// Reads `len_bytes` at `offset_bytes` (both multiples of the bdev's block size) and calls
/// `done` with the bytes from a poller on this core. Called on a reactor.
pub fn read(channel: &Channel, offset_bytes: u64, len_bytes: usize, done: impl FnOnce(ReadResult) + 'static) {
    let buf = DmaBuf::new(len_bytes);
    let done = Rc::new(RefCell::new(Some(Box::new(done) as Box<dyn FnOnce(ReadResult)>)));
    let d2 = done.clone();
    let r = start(
        channel,
        IoOp::Read,
        offset_bytes,
        buf,
        Box::new(move |status, buf| {
            if let Some(d) = d2.borrow_mut().take() {
                d(if status.is_success() {
                    Ok(buf.bytes().to_vec())
                } else {
                    Err(status)
                })
            }
        }),
    );
    if let Err(status) = r {
        // Refused before submission: still answer from a poller, never on the caller's stack.
        defer(move || {
            if let Some(d) = done.borrow_mut().take() {
                d(Err(status))
            }
        });
    }
}

/// Writes `data` (a multiple of the block size) at `offset_bytes`; `done` gets the status from
/// a poller on this core. Called on a reactor.
pub fn write(channel: &Channel, offset_bytes: u64, data: &[u8], done: impl FnOnce(IoStatus) + 'static) {
    let buf = DmaBuf::new(data.len());
    buf.bytes_mut().copy_from_slice(data);
    let done = Rc::new(RefCell::new(Some(Box::new(done) as Box<dyn FnOnce(IoStatus)>)));
    let d2 = done.clone();
    let r = start(
        channel,
        IoOp::Write,
        offset_bytes,
        buf,
        Box::new(move |status, _| {
            if let Some(d) = d2.borrow_mut().take() {
                d(status)
            }
        }),
    );
    if let Err(status) = r {
        defer(move || {
            if let Some(d) = done.borrow_mut().take() {
                d(status)
            }
        });
    }
}

/// Runs `f` once from a poller on this core (an answer that must not run on its caller's
/// stack).
pub(crate) fn defer(f: impl FnOnce() + 'static) {
    let handle: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
    let h2 = handle.clone();
    let mut f = Some(f);
    let h = current().register_poller("md_meta_defer", move || {
        if let Some(f) = f.take() {
            f();
        }
        h2.borrow_mut().take();
        PollStatus::Busy
    });
    *handle.borrow_mut() = Some(h);
}
