//! The handle table: C holds 64-bit ids, never pointers, so a closed, forged or
//! wrong-kind handle is an error instead of a use-after-free.
//!
//! An id packs `(generation << 32) | (kind << 24) | (slot + 1)`. Slots live in
//! segments that are allocated on demand and never freed, so looking an id up only
//! reads memory that stays valid for the life of the process; the slot's `tag` holds
//! the id it is live under (0 when free), so an id of a destroyed object no longer
//! matches even after its slot is reused (the generation changed).
//!
//! Lookups take no lock. Each slot counts its users: a shared use (a model, a sampler)
//! adds one; an exclusive use (a controller, which owns scratch buffers) swaps 0 for 1;
//! destroying swaps 0 for [`CLOSING`]. A lookup that finds `CLOSING`, or a tag that
//! is not its id once it has registered, backs off, so destroy never frees an object
//! another thread is inside, and two threads never share one controller's scratch.
//! Allocation and release go through one mutex (they allocate anyway).

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use crate::error::Failure;

const SLOT_BITS: u32 = 24;
const SEGMENT_BITS: u32 = 12;
const SEGMENT_LEN: usize = 1 << SEGMENT_BITS;
const SEGMENTS: usize = 1 << (SLOT_BITS - SEGMENT_BITS);
/// At most this many objects are alive at once (slot numbers 1 ..= MAX_SLOTS).
const MAX_SLOTS: u32 = (1 << SLOT_BITS) - 1;
/// The user count while a slot is being destroyed.
const CLOSING: u32 = 1 << 31;

/// The kinds of object a handle names (the id's kind byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Model = 1,
    Controller = 2,
    Sampler = 3,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Controller => "controller",
            Kind::Sampler => "sampler",
        }
    }
}

struct Slot {
    /// The id this slot is live under, 0 when free.
    tag: AtomicU64,
    /// Users inside the object (see the module docs).
    users: AtomicU32,
    /// Generation of the slot's last allocation (changed only under `ALLOCATOR`).
    generation: AtomicU32,
    /// The boxed object (its type follows from the kind in `tag`).
    object: AtomicPtr<()>,
}

static SEGMENT_TABLE: [AtomicPtr<Slot>; SEGMENTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SEGMENTS];

struct Allocator {
    free: Vec<u32>,
    /// Slots handed out so far (slot numbers 1 ..= next are in use or free).
    next: u32,
}

static ALLOCATOR: Mutex<Allocator> = Mutex::new(Allocator {
    free: Vec::new(),
    next: 0,
});

fn allocator() -> std::sync::MutexGuard<'static, Allocator> {
    // A panic while holding the lock leaves the free list consistent (every update is
    // a single push or pop), so a poisoned lock is still usable.
    ALLOCATOR.lock().unwrap_or_else(|p| p.into_inner())
}

/// The slot of slot number `n` (1-based), if its segment exists.
fn slot(n: u32) -> Option<&'static Slot> {
    let i = (n as usize).checked_sub(1)?;
    let seg = SEGMENT_TABLE.get(i >> SEGMENT_BITS)?.load(SeqCst);
    if seg.is_null() {
        return None;
    }
    // SAFETY: a non-null segment pointer comes from a leaked `Box<[Slot]>` of
    // SEGMENT_LEN slots (see `insert`) that is never freed, and `i % SEGMENT_LEN` is
    // within it.
    Some(unsafe { &*seg.add(i & (SEGMENT_LEN - 1)) })
}

fn closed(kind: Kind) -> Failure {
    Failure::invalid_handle(format!(
        "the {} handle is closed (destroyed) or was never valid",
        kind.name()
    ))
}

/// The slot an id names, after checking that it is not the null handle and names an
/// object of `kind`.
fn lookup(id: u64, kind: Kind) -> Result<&'static Slot, Failure> {
    if id == 0 {
        return Err(Failure::null_handle(kind.name()));
    }
    let n = (id & u64::from(MAX_SLOTS)) as u32;
    let k = (id >> SLOT_BITS) & 0xff;
    if k != kind as u64 {
        return Err(Failure::invalid_handle(format!(
            "not a {} handle (a forged, corrupted or wrong-kind handle)",
            kind.name()
        )));
    }
    slot(n).ok_or_else(|| closed(kind))
}

/// Boxes `object` and returns the id of a new handle of `kind` to it.
pub(crate) fn insert<T>(kind: Kind, object: T) -> Result<u64, Failure> {
    let mut a = allocator();
    let n = match a.free.pop() {
        Some(n) => n,
        None => {
            if a.next >= MAX_SLOTS {
                return Err(Failure::limit(format!(
                    "more than {MAX_SLOTS} socflow objects alive at once"
                )));
            }
            let n = a.next + 1;
            let seg = &SEGMENT_TABLE[(n as usize - 1) >> SEGMENT_BITS];
            if seg.load(SeqCst).is_null() {
                let slots: Box<[Slot]> = (0..SEGMENT_LEN)
                    .map(|_| Slot {
                        tag: AtomicU64::new(0),
                        users: AtomicU32::new(0),
                        generation: AtomicU32::new(0),
                        object: AtomicPtr::new(std::ptr::null_mut()),
                    })
                    .collect();
                // Leaked on purpose: lookups may read any slot at any time.
                seg.store(Box::leak(slots).as_mut_ptr(), SeqCst);
            }
            a.next = n;
            n
        }
    };
    let s = slot(n).expect("the allocator created this slot's segment");
    let generation = s.generation.load(SeqCst).wrapping_add(1);
    s.generation.store(generation, SeqCst);
    let id = (u64::from(generation) << 32) | ((kind as u64) << SLOT_BITS) | u64::from(n);
    s.object
        .store(Box::into_raw(Box::new(object)).cast::<()>(), SeqCst);
    // The user count is left as it is: it is 0 but for transient counts of late
    // lookups with an old id, which see the new tag and undo their own count.
    s.tag.store(id, SeqCst);
    Ok(id)
}

/// Shared access to an object (released on drop).
pub(crate) struct Shared<T: 'static> {
    slot: &'static Slot,
    object: &'static T,
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.object
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        self.slot.users.fetch_sub(1, SeqCst);
    }
}

/// Shared access to the object of handle `id`, which must be of `kind` and hold a `T`.
pub(crate) fn shared<T>(id: u64, kind: Kind) -> Result<Shared<T>, Failure> {
    let slot = lookup(id, kind)?;
    let before = slot.users.fetch_add(1, SeqCst);
    if before >= CLOSING || slot.tag.load(SeqCst) != id {
        slot.users.fetch_sub(1, SeqCst);
        return Err(closed(kind));
    }
    let p = slot.object.load(SeqCst).cast::<T>();
    // SAFETY: the tag matched after we registered as a user, so the slot holds the
    // object `insert` boxed for this id (a `T`: the kind byte says which type, and
    // each kind is inserted with one type), and `destroy` cannot free it until our
    // user count is released by `Shared::drop`. The reference does not outlive the
    // guard that holds the count (the guard owns it and derefs to it).
    let object = unsafe { &*p };
    Ok(Shared { slot, object })
}

/// Exclusive access to an object (released on drop).
pub(crate) struct Exclusive<T: 'static> {
    slot: &'static Slot,
    object: *mut T,
}

impl<T> std::ops::Deref for Exclusive<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: as in `exclusive`: the object is alive and ours alone while the
        // guard lives.
        unsafe { &*self.object }
    }
}

impl<T> std::ops::DerefMut for Exclusive<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `exclusive`.
        unsafe { &mut *self.object }
    }
}

impl<T> Drop for Exclusive<T> {
    fn drop(&mut self) {
        self.slot.users.fetch_sub(1, SeqCst);
    }
}

/// Exclusive access to the object of handle `id`; a handle in use by another thread
/// gives [`Failure::busy`].
pub(crate) fn exclusive<T>(id: u64, kind: Kind) -> Result<Exclusive<T>, Failure> {
    let slot = lookup(id, kind)?;
    if let Err(users) = slot.users.compare_exchange(0, 1, SeqCst, SeqCst) {
        return Err(if users >= CLOSING || slot.tag.load(SeqCst) != id {
            closed(kind)
        } else {
            Failure::busy(kind.name())
        });
    }
    if slot.tag.load(SeqCst) != id {
        slot.users.fetch_sub(1, SeqCst);
        return Err(closed(kind));
    }
    // The guard holds the only user count, so no other thread can reach the object
    // (shared and exclusive lookups both back off) or free it until it is dropped.
    Ok(Exclusive {
        slot,
        object: slot.object.load(SeqCst).cast::<T>(),
    })
}

/// Destroys the object of handle `id`. The null handle is accepted and does nothing;
/// a closed handle or one in use by another thread is an error.
pub(crate) fn destroy<T>(id: u64, kind: Kind) -> Result<(), Failure> {
    if id == 0 {
        return Ok(());
    }
    let slot = lookup(id, kind)?;
    let mut a = allocator();
    if slot.tag.load(SeqCst) != id {
        return Err(closed(kind));
    }
    if slot
        .users
        .compare_exchange(0, CLOSING, SeqCst, SeqCst)
        .is_err()
    {
        return Err(Failure::busy(kind.name()));
    }
    slot.tag.store(0, SeqCst);
    let p = slot.object.swap(std::ptr::null_mut(), SeqCst).cast::<T>();
    // Late lookups that registered while CLOSING was set undo their own count.
    slot.users.fetch_sub(CLOSING, SeqCst);
    a.free.push((id & u64::from(MAX_SLOTS)) as u32);
    drop(a);
    // SAFETY: `p` came from `Box::into_raw(Box::new(object))` with `object: T` in
    // `insert` for this id (the tag matched under the allocator lock, and the kind
    // fixes the type); the tag is now 0 and the user count was 0 when we took it, so
    // no guard refers to the object and no new one can.
    drop(unsafe { Box::from_raw(p) });
    Ok(())
}
