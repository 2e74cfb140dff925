//! Rows in parallel on a dedicated thread pool.
//!
//! The pool is logitkit's own, sized by [`set_num_threads`] or `LOGITKIT_NUM_THREADS`, default:
//! the available cores, at most 16. A pool of `n` threads is the calling thread and `n - 1`
//! helpers. The caller and the helpers take rows from one counter until none is left, so a
//! helper that wakes late finds fewer rows (or none) and a call is never much slower than on one
//! thread. After a call the helpers spin for a short while (`LOGITKIT_SPIN_US`, default 100 µs)
//! before they sleep, so the next call of a decoding loop finds them awake. Small batches run on
//! the calling thread, where waking helpers would cost more than it saves. Every row is computed
//! by one thread with the same code, so results do not depend on the thread count.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pipeline::Scratch;
use crate::error::KernelError;

/// Below this many elements in a call, rows run on the calling thread.
const PAR_MIN_ELEMENTS: usize = 1 << 16;

/// How long a helper waits for the next call, spinning, before it sleeps.
const DEFAULT_SPIN: Duration = Duration::from_micros(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct PoolState {
    threads: usize,
    pool: Option<Arc<Pool>>,
}

static POOL: Mutex<PoolState> = Mutex::new(PoolState {
    threads: 0,
    pool: None,
});

/// A whole number from the environment; one too large for `usize` reads as `usize::MAX` (then
/// lowered by the caller), anything else that is not a whole number as unset.
fn env_usize(name: &str) -> Option<usize> {
    whole_number(&std::env::var(name).ok()?)
}

fn whole_number(s: &str) -> Option<usize> {
    match s.trim().parse::<usize>() {
        Ok(n) => Some(n),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Some(usize::MAX),
        Err(_) => None,
    }
}

/// The thread count that a value of `LOGITKIT_NUM_THREADS` asks for (before it is lowered to
/// [`MAX_THREADS`]): None where it is not a positive integer, which leaves the default.
#[must_use]
pub fn threads_from(value: &str) -> Option<usize> {
    whole_number(value).filter(|&n| n >= 1)
}

/// The most threads a pool has: counts above it are lowered to it.
pub const MAX_THREADS: usize = 1024;

fn default_threads() -> usize {
    std::env::var("LOGITKIT_NUM_THREADS")
        .ok()
        .and_then(|s| threads_from(&s))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(16)))
        .min(MAX_THREADS)
}

/// The state, with a pool inherited through `fork` (its threads do not exist in this process)
/// forgotten: dropping it would join threads that are not there.
fn state() -> MutexGuard<'static, PoolState> {
    let mut st = lock(&POOL);
    if st.threads == 0 {
        st.threads = default_threads();
    }
    if st
        .pool
        .as_ref()
        .is_some_and(|p| p.pid != std::process::id())
    {
        std::mem::forget(st.pool.take());
    }
    st
}

/// The number of threads batch calls use.
#[must_use]
pub fn num_threads() -> usize {
    state().threads
}

/// Sets the number of threads batch calls use (`n` is brought into `1..=MAX_THREADS`).
pub fn set_num_threads(n: usize) {
    let n = n.clamp(1, MAX_THREADS);
    let old = {
        let mut st = state();
        if st.threads == n {
            return;
        }
        st.threads = n;
        st.pool.take()
    };
    // Joined outside the lock (a pool still in use by a call is joined when that call ends).
    drop(old);
}

/// Forgets the pool without touching its threads: in a child process after `fork` they do not
/// exist. The next batch call builds a new pool.
pub fn forget_pool_after_fork() {
    let guard = FORK_GUARD.with(|g| g.borrow_mut().take());
    let mut st = guard.unwrap_or_else(|| lock(&POOL));
    std::mem::forget(st.pool.take());
}

thread_local! {
    /// The state lock, held by the forking thread from [`before_fork`] to the end of the fork,
    /// so that no other thread holds it at the moment of the fork (a child would inherit it
    /// locked, with no thread to unlock it).
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, PoolState>>> = const { RefCell::new(None) };
}

/// Takes the state lock for a `fork` about to happen on this thread ([`after_fork_in_parent`]
/// and [`forget_pool_after_fork`] release it). Python's fork hooks may hand the GIL to another
/// thread while this lock is held, so the bindings never wait for it with the GIL held.
pub fn before_fork() {
    let guard = lock(&POOL);
    FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
}

/// Releases the state lock in the parent after a `fork`.
pub fn after_fork_in_parent() {
    drop(FORK_GUARD.with(|g| g.borrow_mut().take()));
}

fn pool() -> Option<Arc<Pool>> {
    let threads = {
        let st = state();
        if st.threads <= 1 {
            return None;
        }
        if let Some(p) = &st.pool {
            return Some(Arc::clone(p));
        }
        st.threads
    };
    // Threads are started outside the lock; if another call installed a pool meanwhile, that one
    // is used and this one is joined again.
    let fresh = Pool::new(threads - 1).map(Arc::new);
    let mut st = state();
    if st.pool.is_none() && st.threads == threads {
        st.pool.clone_from(&fresh);
    }
    let p = st.pool.clone();
    drop(st);
    drop(fresh);
    p
}

/// The job of one call: a borrowed closure whose lifetime the pool erases. It is only called
/// between [`Shared::state`]'s open and close, and the caller returns only after the close has
/// seen every helper leave, so the closure outlives every call to it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn() + Sync + 'static));

// SAFETY: the pointee is `Sync`, and the protocol above keeps it alive while it is used.
unsafe impl Send for JobPtr {}

/// `state`: bit 0 set while a call's job is open; the rest counts the helpers inside it.
const OPEN: usize = 1;
const ONE_HELPER: usize = 2;

struct Shared {
    /// Bumped once per call: a helper that sees it change looks for the open job.
    epoch: AtomicU64,
    state: AtomicUsize,
    job: Mutex<Option<JobPtr>>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    spin: Duration,
}

struct Pool {
    shared: Arc<Shared>,
    /// The process that started the helpers.
    pid: u32,
    /// Held by the call that uses the helpers; a concurrent call runs on its own thread.
    busy: AtomicBool,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(helpers: usize) -> Option<Self> {
        let spin = env_usize("LOGITKIT_SPIN_US").map_or(DEFAULT_SPIN, |us| {
            Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
        });
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            state: AtomicUsize::new(0),
            job: Mutex::new(None),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            spin,
        });
        let mut threads = Vec::with_capacity(helpers);
        for i in 0..helpers {
            let sh = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name(format!("logitkit-{i}"))
                .spawn(move || helper(&sh))
            {
                Ok(t) => threads.push(t),
                Err(_) => break,
            }
        }
        let pool = Self {
            shared,
            pid: std::process::id(),
            busy: AtomicBool::new(false),
            threads,
        };
        (!pool.threads.is_empty()).then_some(pool)
    }

    /// Calls `job` on this thread and on every helper that arrives before it returns here.
    fn run(&self, job: &(dyn Fn() + Sync)) {
        if self.busy.swap(true, Ordering::Acquire) {
            job();
            return;
        }
        let sh = &*self.shared;
        // SAFETY: only the lifetime is erased; see `JobPtr`.
        let ptr: *const (dyn Fn() + Sync + 'static) = unsafe {
            std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync)>(job)
        };
        *lock(&sh.job) = Some(JobPtr(ptr));
        sh.state.store(OPEN, Ordering::Release);
        sh.epoch.fetch_add(1, Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = lock(&sh.sleep);
            sh.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(job));
        sh.state.fetch_and(!OPEN, Ordering::AcqRel);
        let mut spins = 0u32;
        while sh.state.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        *lock(&sh.job) = None;
        let theirs = lock(&sh.panic).take();
        self.busy.store(false, Ordering::Release);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = lock(&self.shared.sleep);
            self.shared.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits for an epoch other than `seen`: spinning for `sh.spin`, then asleep. `None` at shutdown.
fn next_epoch(sh: &Shared, seen: u64) -> Option<u64> {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if sh.shutdown.load(Ordering::Relaxed) {
            return None;
        }
        let e = sh.epoch.load(Ordering::Acquire);
        if e != seen {
            return Some(e);
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) && start.elapsed() >= sh.spin {
            break;
        }
        std::hint::spin_loop();
    }
    let mut g = lock(&sh.sleep);
    sh.sleepers.fetch_add(1, Ordering::SeqCst);
    let res = loop {
        if sh.shutdown.load(Ordering::SeqCst) {
            break None;
        }
        let e = sh.epoch.load(Ordering::SeqCst);
        if e != seen {
            break Some(e);
        }
        g = sh.wake.wait(g).unwrap_or_else(PoisonError::into_inner);
    };
    sh.sleepers.fetch_sub(1, Ordering::SeqCst);
    res
}

fn helper(sh: &Shared) {
    let mut seen = sh.epoch.load(Ordering::Acquire);
    while let Some(e) = next_epoch(sh, seen) {
        seen = e;
        let mut s = sh.state.load(Ordering::Acquire);
        let entered = loop {
            if s & OPEN == 0 {
                break false;
            }
            match sh.state.compare_exchange_weak(
                s,
                s + ONE_HELPER,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break true,
                Err(now) => s = now,
            }
        };
        if !entered {
            continue;
        }
        // Leaves the job (even if dropping a panic payload panics), so the caller never waits
        // for a helper that is gone.
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(ONE_HELPER, Ordering::Release);
            }
        }
        let _leave = Leave(&sh.state);
        // Copied out, so that the lock is not held while the job runs.
        let published = *lock(&sh.job);
        if let Some(JobPtr(job)) = published {
            // SAFETY: the job is open and this helper is counted in it, so the caller is still
            // inside `Pool::run` and the closure is alive.
            let job = unsafe { &*job };
            if let Err(p) = catch_unwind(AssertUnwindSafe(job)) {
                let mut first = lock(&sh.panic);
                if first.is_none() {
                    *first = Some(p);
                } else {
                    std::mem::forget(p);
                }
            }
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers.
pub fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Refuses rows longer than `u32::MAX` tokens: token ids are 32-bit throughout (candidates,
/// token lists, the penalties' table).
///
/// # Errors
/// A row of more than `u32::MAX` tokens.
pub fn check_vocab(vocab: usize) -> Result<(), KernelError> {
    if u32::try_from(vocab).is_err() {
        return Err(KernelError::param(
            "logits",
            None,
            format!("a row of {vocab} tokens is longer than the 2**32 - 1 supported"),
        ));
    }
    Ok(())
}

/// Calls `f(row, out_chunk, scratch)` for every row, where `out_chunk` is that row's
/// `out_per_row` outputs, in parallel when the call is big enough. Every row runs, whatever
/// fails; returns the error of the lowest failing row, renumbered to that row.
///
/// # Errors
/// A row longer than `u32::MAX` tokens; `out` not `rows * out_per_row` long (naming
/// `out`); the first (lowest row) error of `f`.
pub fn for_rows<O, F>(
    rows: usize,
    vocab: usize,
    out: &mut [O],
    out_per_row: usize,
    f: F,
) -> Result<(), KernelError>
where
    O: Send,
    F: Fn(usize, &mut [O], &mut Scratch) -> Result<(), KernelError> + Sync,
{
    check_vocab(vocab)?;
    if Some(out.len()) != rows.checked_mul(out_per_row) {
        return Err(KernelError::param(
            "out",
            None,
            format!(
                "holds {} values, {rows} rows need {rows} x {out_per_row}",
                out.len()
            ),
        ));
    }
    let run = |r: usize, o: &mut [O]| with_scratch(|s| f(r, o, s)).map_err(|e| e.at_row(r));
    let pool = if rows >= 2 && rows.saturating_mul(vocab) >= PAR_MIN_ELEMENTS {
        pool()
    } else {
        None
    };
    let Some(pool) = pool else {
        // Every row runs, as in parallel, so that what an error leaves in `out` does not depend
        // on the thread count.
        let mut first = None;
        for r in 0..rows {
            let o = &mut out[r * out_per_row..(r + 1) * out_per_row];
            if let (Err(e), None) = (run(r, o), &first) {
                first = Some(e);
            }
        }
        return first.map_or(Ok(()), Err);
    };
    let slots: Vec<Mutex<&mut [O]>> = if out_per_row == 0 {
        (0..rows)
            .map(|_| Mutex::new(<&mut [O]>::default()))
            .collect()
    } else {
        out.chunks_mut(out_per_row).map(Mutex::new).collect()
    };
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<(usize, KernelError)>> = Mutex::new(None);
    pool.run(&|| loop {
        let r = next.fetch_add(1, Ordering::Relaxed);
        if r >= rows {
            break;
        }
        if let Err(e) = run(r, &mut lock(&slots[r])) {
            let mut fe = lock(&first_err);
            if fe.as_ref().is_none_or(|(fr, _)| r < *fr) {
                *fe = Some((r, e));
            }
        }
    });
    match first_err
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The thread count is process-wide: these tests take turns.
    static TURN: Mutex<()> = Mutex::new(());

    /// Enough elements per row that any batch of two rows or more runs in parallel.
    const WIDE: usize = PAR_MIN_ELEMENTS;

    fn square_rows(rows: usize) -> Result<Vec<u64>, KernelError> {
        let calls = AtomicUsize::new(0);
        let mut out = vec![0u64; rows * 2];
        for_rows(rows, WIDE, &mut out, 2, |r, o, _| {
            calls.fetch_add(1, Ordering::Relaxed);
            o[0] = r as u64;
            o[1] = (r * r) as u64;
            Ok(())
        })?;
        assert_eq!(calls.into_inner(), rows, "every row runs exactly once");
        Ok(out)
    }

    fn want(rows: usize) -> Vec<u64> {
        (0..rows).flat_map(|r| [r as u64, (r * r) as u64]).collect()
    }

    #[test]
    fn every_row_runs_once_into_its_own_outputs_for_every_thread_count() {
        let _t = lock(&TURN);
        for threads in 1..=5 {
            set_num_threads(threads);
            for rows in [0, 1, 2, 3, 7, 64, 257] {
                assert_eq!(square_rows(rows).unwrap(), want(rows), "{threads} threads");
            }
        }
    }

    #[test]
    fn thread_counts_are_brought_into_range() {
        let _t = lock(&TURN);
        set_num_threads(0);
        assert_eq!(num_threads(), 1);
        set_num_threads(usize::MAX);
        assert_eq!(num_threads(), MAX_THREADS);
        set_num_threads(2);
        assert_eq!(num_threads(), 2);
    }

    #[test]
    fn the_lowest_failing_row_is_reported_for_every_thread_count() {
        let _t = lock(&TURN);
        for threads in 1..=4 {
            set_num_threads(threads);
            for _ in 0..20 {
                let res = for_rows(200, WIDE, &mut [(); 0], 0, |r, _, _| {
                    if [17, 93, 150].contains(&r) {
                        Err(KernelError::AllMasked { row: 0 })
                    } else {
                        Ok(())
                    }
                });
                assert_eq!(
                    res,
                    Err(KernelError::AllMasked { row: 17 }),
                    "{threads} threads"
                );
            }
        }
    }

    #[test]
    fn helpers_take_rows() {
        let _t = lock(&TURN);
        set_num_threads(2);
        // A call runs alone while another test's call holds the helpers: try a few times.
        let threads_seen = (0..50).map(|_| {
            let ids = Mutex::new(HashSet::new());
            for_rows(64, WIDE, &mut [(); 0], 0, |_, _, _| {
                lock(&ids).insert(std::thread::current().id());
                std::thread::sleep(Duration::from_micros(200));
                Ok(())
            })
            .unwrap();
            ids.into_inner().unwrap().len()
        });
        assert!(threads_seen.into_iter().any(|n| n == 2));
    }

    #[test]
    fn every_helper_works_at_once() {
        let _t = lock(&TURN);
        for threads in [3, 4] {
            set_num_threads(threads);
            // A call runs alone while another test's call holds the helpers: try a few times.
            let most = (0..60).map(|_| {
                let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
                for_rows(4 * threads, WIDE, &mut [(); 0], 0, |_, _, _| {
                    most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap();
                most.into_inner()
            });
            assert!(most.into_iter().any(|m| m == threads), "{threads} threads");
        }
    }

    #[test]
    fn a_wrong_output_length_is_an_error_naming_out() {
        let _t = lock(&TURN);
        for threads in [1, 2] {
            set_num_threads(threads);
            let mut out = vec![0u64; 7];
            let res = for_rows(4, WIDE, &mut out, 2, |_, o, _| {
                o.fill(1);
                Ok(())
            });
            assert!(
                matches!(res, Err(KernelError::InvalidParam { name: "out", .. })),
                "{res:?}"
            );
            assert_eq!(out, vec![0; 7], "nothing is written");
        }
    }

    #[test]
    fn every_row_runs_despite_errors_for_every_thread_count() {
        let _t = lock(&TURN);
        for threads in [1, 2, 3] {
            set_num_threads(threads);
            for rows in [1, 3, 40] {
                let mut out = vec![0u8; rows];
                let res = for_rows(rows, WIDE, &mut out, 1, |r, o, _| {
                    o[0] = 1;
                    if r % 2 == 0 {
                        Err(KernelError::AllMasked { row: 0 })
                    } else {
                        Ok(())
                    }
                });
                assert_eq!(res, Err(KernelError::AllMasked { row: 0 }));
                assert!(
                    out.iter().all(|&v| v == 1),
                    "{threads} threads, {rows} rows"
                );
            }
        }
    }

    #[test]
    fn concurrent_callers_and_thread_count_changes_agree_with_serial() {
        let _t = lock(&TURN);
        set_num_threads(3);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let callers: Vec<_> = (0..4)
                .map(|i| {
                    s.spawn(move || {
                        for j in 0..300 {
                            let rows = 2 + (i * 7 + j) % 40;
                            assert_eq!(square_rows(rows).unwrap(), want(rows));
                        }
                    })
                })
                .collect();
            let stop = &stop;
            s.spawn(move || {
                let mut n = 1;
                while !stop.load(Ordering::Relaxed) {
                    n = n % 4 + 1;
                    set_num_threads(n);
                    std::thread::sleep(Duration::from_micros(300));
                }
            });
            for c in callers {
                c.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
    }

    #[test]
    fn a_panic_in_a_row_reaches_the_caller_and_the_pool_keeps_working() {
        let _t = lock(&TURN);
        set_num_threads(2);
        for bad in [0, 5, 63] {
            let res = catch_unwind(|| {
                for_rows(64, WIDE, &mut [(); 0], 0, |r, _, _| {
                    assert!(r != bad, "row {bad} fails");
                    Ok(())
                })
            });
            assert!(res.is_err(), "the panic of row {bad} is lost");
            assert_eq!(square_rows(64).unwrap(), want(64));
        }
        let every =
            catch_unwind(|| for_rows(64, WIDE, &mut [(); 0], 0, |_, _, _| panic!("every row")));
        assert!(every.is_err());
        assert_eq!(square_rows(64).unwrap(), want(64));
    }
}
