//! The submission-token queue: the table of submissions in flight in a kernel queue — an
//! io_uring today (the uring/aio bdev), a socket ring or an NVMe queue pair later — keyed by the
//! small integer token each submission carries (an SQE's `user_data`, a command id) and that its
//! completion hands back.
//!
//! # Design
//!
//! A [`TokenQueue`] of `capacity` tokens is built once, with the per-core channel that owns it,
//! and never grows, shrinks or moves afterwards. Each token has two parts:
//!
//! - an **owner** slot (`Option<O>`): what the submission belongs to — for the file bdev the
//!   request (whose `DmaBuf`s the kernel reads or writes, so holding it keeps that memory alive)
//!   and what its completion must check — moved in when the submission is queued and moved out
//!   when its completion arrives;
//! - a **scratch** value `S` that lives at a fixed address for the life of the queue: memory the
//!   kernel may read while the submission is in flight, such as the `iovec` array of a vectored
//!   read or write. The tokens' parts sit in one boxed slice that is never reallocated, so a
//!   pointer into a scratch value stays valid until the queue is dropped.
//!
//! Taking a token is two steps, because building the kernel's entry needs the token (and its
//! scratch) before the caller knows the kernel queue will accept the entry: [`TokenQueue::vacant`]
//! lends the next free token and its scratch, and [`Vacant::insert`] commits it with its owner.
//! Dropping the [`Vacant`] instead leaves the token free. [`TokenQueue::take`] ends a submission
//! by its token value and returns the owner; unknown or free tokens give `None`, so a token the
//! caller reserves for itself (e.g. `u64::MAX` for a cancel) can share the same value space.
//!
//! Free tokens are reused last-in first-out: the most recently completed token's scratch is
//! the one still in cache. After [`TokenQueue::new`] nothing allocates and nothing locks: the
//! queue belongs to one core and is used through `&mut`.
//!
//! Dropping the queue drops the owners still in it. A user whose kernel may still touch an
//! owner's memory must first wait for every completion, or give up with [`TokenQueue::leak`].

/// The value a submission carries to name its token (`user_data`, a command id). Obtained from
/// [`Vacant::token`]; plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u32);

impl Token {
    /// The token as the kernel carries it.
    #[inline]
    pub fn as_u64(self) -> u64 {
        self.0 as u64
    }
}

struct Entry<O, S> {
    owner: Option<O>,
    scratch: S,
}

/// Submissions in flight, by token. Built on the core that owns it (with the channel), used and
/// dropped there. See the module docs.
pub struct TokenQueue<O, S = ()> {
    entries: Box<[Entry<O, S>]>,
    /// Free token indices, the next one to hand out last.
    free: Vec<u32>,
    in_flight: u32,
}

impl<O, S> TokenQueue<O, S> {
    /// A queue of `capacity` tokens (`0..capacity`), each with the scratch value `scratch()`
    /// returns. Allocates everything the queue will ever use.
    pub fn new(capacity: u32, mut scratch: impl FnMut() -> S) -> TokenQueue<O, S> {
        TokenQueue {
            entries: (0..capacity)
                .map(|_| Entry {
                    owner: None,
                    scratch: scratch(),
                })
                .collect(),
            free: (0..capacity).rev().collect(),
            in_flight: 0,
        }
    }

    /// Number of tokens.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Submissions in flight (tokens with an owner).
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Whether no submission is in flight.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0
    }

    /// The next free token and its scratch, or `None` when every token is in flight (the caller
    /// applies backpressure). Nothing is taken until [`Vacant::insert`].
    #[inline]
    pub fn vacant(&mut self) -> Option<Vacant<'_, O, S>> {
        let index = *self.free.last()?;
        Some(Vacant {
            entry: &mut self.entries[index as usize],
            free: &mut self.free,
            in_flight: &mut self.in_flight,
            index,
        })
    }

    /// Ends the submission of token value `token` and returns its owner; the token is free
    /// again. `None` (and nothing changes) for a value that is no token of this queue or a token
    /// not in flight.
    #[inline]
    pub fn take(&mut self, token: u64) -> Option<O> {
        let owner = self.entries.get_mut(usize::try_from(token).ok()?)?.owner.take()?;
        // In range: the entries' count fits a u32 (`new` takes a u32 capacity).
        self.free.push(token as u32);
        self.in_flight -= 1;
        Some(owner)
    }

    /// Last resort when the kernel may still use the submissions' memory but can no longer be
    /// waited on: forgets every owner still in flight and the scratch storage (never freed, so
    /// never reused under the kernel's feet). The queue is empty (capacity 0) afterwards.
    pub fn leak(&mut self) {
        for e in self.entries.iter_mut() {
            if let Some(owner) = e.owner.take() {
                std::mem::forget(owner);
            }
        }
        std::mem::forget(std::mem::take(&mut self.entries));
        self.free.clear();
        self.in_flight = 0;
    }
}

/// A free token lent by [`TokenQueue::vacant`]: fill its scratch, build the submission with
/// [`Vacant::token`], then [`Vacant::insert`] the owner once the kernel queue took it (or drop
/// the `Vacant` to leave the token free).
pub struct Vacant<'q, O, S> {
    // The queue's parts, borrowed apart so that the token's entry is looked up once.
    entry: &'q mut Entry<O, S>,
    free: &'q mut Vec<u32>,
    in_flight: &'q mut u32,
    index: u32,
}

impl<O, S> Vacant<'_, O, S> {
    /// The token the submission must carry.
    #[inline]
    pub fn token(&self) -> Token {
        Token(self.index)
    }

    /// The token's scratch (at a fixed address while the queue lives).
    #[inline]
    pub fn scratch(&mut self) -> &mut S {
        &mut self.entry.scratch
    }

    /// Commits the token: the submission is in flight, owned by `owner` until
    /// [`TokenQueue::take`].
    // Always inlined: a call would cost the submit path more than the body.
    #[inline(always)]
    pub fn insert(self, owner: O) {
        let popped = self.free.pop();
        debug_assert_eq!(popped, Some(self.index), "the lent token is the last free one");
        match &mut self.entry.owner {
            // A free token never has an owner; matching it says so to the compiler, which then
            // stores the owner without drop code for a previous one.
            slot @ None => *slot = Some(owner),
            Some(_) => unreachable!("free token {} has an owner", self.index),
        }
        *self.in_flight += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn tokens_are_lent_committed_taken_and_reused_last_in_first_out() {
        let mut q: TokenQueue<&str, [u8; 4]> = TokenQueue::new(3, || [0; 4]);
        assert_eq!((q.capacity(), q.in_flight(), q.is_idle()), (3, 0, true));
        let mut v = q.vacant().unwrap();
        let t0 = v.token();
        v.scratch()[0] = 7;
        v.insert("a");
        // A Vacant dropped without insert leaves the token free: the same one is lent again.
        let t1 = q.vacant().unwrap().token();
        assert_ne!(t0, t1);
        let v = q.vacant().unwrap();
        assert_eq!(v.token(), t1);
        v.insert("b");
        assert_eq!(q.in_flight(), 2);
        assert_eq!(q.take(t0.as_u64()), Some("a"));
        assert_eq!(q.take(t0.as_u64()), None, "a token completes once");
        // The token freed last is lent first, with its scratch as it was left.
        let mut v = q.vacant().unwrap();
        assert_eq!(v.token(), t0);
        assert_eq!(v.scratch()[0], 7);
        v.insert("c");
        q.vacant().unwrap().insert("d");
        assert!(q.vacant().is_none(), "every token in flight");
        assert_eq!(q.in_flight(), 3);
        assert_eq!(q.take(u64::MAX), None, "not a token of this queue");
        assert_eq!(q.take(3), None);
        assert_eq!(q.in_flight(), 3);
    }

    #[test]
    fn scratch_stays_at_its_address() {
        let mut q: TokenQueue<u32, [u64; 16]> = TokenQueue::new(8, || [0; 16]);
        let mut addrs = Vec::new();
        for i in 0..8 {
            let mut v = q.vacant().unwrap();
            addrs.push((v.token(), v.scratch().as_ptr()));
            v.insert(i);
        }
        for (t, _) in &addrs {
            q.take(t.as_u64()).unwrap();
        }
        for _ in 0..8 {
            let mut v = q.vacant().unwrap();
            let t = v.token();
            let p = v.scratch().as_ptr();
            assert!(addrs.contains(&(t, p)), "token {t:?} moved its scratch");
            v.insert(0);
        }
    }

    #[test]
    fn leak_forgets_owners_and_empties_the_queue() {
        let owner = std::rc::Rc::new(());
        let mut q: TokenQueue<std::rc::Rc<()>> = TokenQueue::new(4, || ());
        q.vacant().unwrap().insert(owner.clone());
        q.vacant().unwrap().insert(owner.clone());
        q.leak();
        assert_eq!(std::rc::Rc::strong_count(&owner), 3, "owners forgotten, not dropped");
        assert_eq!((q.capacity(), q.in_flight()), (0, 0));
        assert!(q.vacant().is_none());
        assert_eq!(q.take(0), None);
    }

    proptest! {
        /// Any sequence of submissions, abandoned lends and completions (in any order) keeps the
        /// queue consistent with a model: every owner comes back exactly once under the token it
        /// was inserted with, in-flight counts agree, and tokens run out only at capacity.
        #[test]
        fn queue_matches_a_model(capacity in 1u32..16, ops in prop::collection::vec((0u8..3, any::<u16>()), 0..200)) {
            let mut q: TokenQueue<u32> = TokenQueue::new(capacity, || ());
            let mut model: HashMap<u64, u32> = HashMap::new();
            let mut next = 0u32;
            for (op, pick) in ops {
                match op {
                    0 => match q.vacant() {
                        Some(v) => {
                            let t = v.token().as_u64();
                            prop_assert!(t < capacity as u64);
                            prop_assert!(!model.contains_key(&t), "token {} lent while in flight", t);
                            v.insert(next);
                            model.insert(t, next);
                            next += 1;
                        }
                        None => prop_assert_eq!(model.len(), capacity as usize),
                    },
                    1 => {
                        // Lent and abandoned: nothing changes.
                        let lent = q.vacant().map(|v| v.token());
                        prop_assert_eq!(lent.is_some(), model.len() < capacity as usize);
                    }
                    _ => {
                        let t = pick as u64 % (capacity as u64 + 2);
                        prop_assert_eq!(q.take(t), model.remove(&t));
                    }
                }
                prop_assert_eq!(q.in_flight() as usize, model.len());
            }
            let mut left: Vec<u64> = model.keys().copied().collect();
            left.sort();
            for t in left {
                prop_assert_eq!(q.take(t), model.remove(&t));
            }
            prop_assert!(q.is_idle());
        }
    }
}
