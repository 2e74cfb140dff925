//! Rows in parallel on a dedicated thread pool.
//!
//! The pool is logitkit's own (not rayon's global pool), sized by [`set_num_threads`] or
//! `LOGITKIT_NUM_THREADS`, default: the available cores, at most 16. Small batches run on the
//! calling thread, where waking workers would cost more than it saves. Every row is computed by
//! one thread with the same code, so results do not depend on the thread count.

use std::sync::{Arc, Mutex, PoisonError};

use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

use super::pipeline::Scratch;
use crate::error::KernelError;

/// Below this many elements in a call, rows run on the calling thread.
const PAR_MIN_ELEMENTS: usize = 1 << 16;

struct PoolState {
    threads: usize,
    pool: Option<Arc<ThreadPool>>,
}

static POOL: Mutex<PoolState> = Mutex::new(PoolState {
    threads: 0,
    pool: None,
});

fn default_threads() -> usize {
    std::env::var("LOGITKIT_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(16)))
}

/// The number of threads batch calls use.
#[must_use]
pub fn num_threads() -> usize {
    let mut st = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if st.threads == 0 {
        st.threads = default_threads();
    }
    st.threads
}

/// Sets the number of threads batch calls use (`n >= 1`).
pub fn set_num_threads(n: usize) {
    let mut st = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if st.threads != n {
        st.threads = n.max(1);
        st.pool = None;
    }
}

/// Forgets the pool without touching its threads: in a child process after `fork` they do not
/// exist. The next batch call builds a new pool.
pub fn forget_pool_after_fork() {
    let mut st = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = st.pool.take() {
        std::mem::forget(p);
    }
}

fn pool() -> Option<Arc<ThreadPool>> {
    let mut st = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if st.threads == 0 {
        st.threads = default_threads();
    }
    if st.threads <= 1 {
        return None;
    }
    if st.pool.is_none() {
        st.pool = ThreadPoolBuilder::new()
            .num_threads(st.threads)
            .thread_name(|i| format!("logitkit-{i}"))
            .build()
            .ok()
            .map(Arc::new);
    }
    st.pool.clone()
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers.
pub fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Calls `f(row, out_chunk, scratch)` for every row, where `out_chunk` is that row's
/// `out_per_row` outputs, in parallel when the call is big enough. Returns the error of the
/// lowest failing row, renumbered to that row.
///
/// # Errors
/// The first (lowest row) error returned by `f`.
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
    debug_assert_eq!(out.len(), rows * out_per_row);
    let run = |r: usize, o: &mut [O]| with_scratch(|s| f(r, o, s)).map_err(|e| e.at_row(r));
    let pool = if rows >= 2 && rows.saturating_mul(vocab) >= PAR_MIN_ELEMENTS {
        pool()
    } else {
        None
    };
    let first_err =
        |results: Vec<Result<(), KernelError>>| results.into_iter().find_map(Result::err);
    let err = match (pool, out_per_row) {
        (Some(pool), 0) => {
            pool.install(|| first_err((0..rows).into_par_iter().map(|r| run(r, &mut [])).collect()))
        }
        (Some(pool), n) => pool.install(|| {
            first_err(
                out.par_chunks_mut(n)
                    .enumerate()
                    .map(|(r, o)| run(r, o))
                    .collect(),
            )
        }),
        (None, 0) => (0..rows).map(|r| run(r, &mut [])).find_map(Result::err),
        (None, n) => out
            .chunks_mut(n)
            .enumerate()
            .map(|(r, o)| run(r, o))
            .find_map(Result::err),
    };
    err.map_or(Ok(()), Err)
}
