//! A small fork-join pool built for decode: one operation is a few microseconds of work, and a
//! token runs hundreds of them, so handing work to threads must cost far less than a
//! general-purpose scheduler's wake-up (rayon's `install` blocks the caller on a condition
//! variable and wakes workers through the kernel on every call).
//!
//! The calling thread always works too; `threads - 1` helpers spin on an epoch counter between
//! operations (like llama.cpp's CPU threads) and only go to sleep after [`SPIN`] without work,
//! so an idle server does not burn a core. Tasks are claimed from an atomic counter, so uneven
//! tasks balance themselves.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_millis(3);

/// Set in [`Shared::state`] once the caller has stopped taking helpers for the current job.
const CLOSED: usize = 1 << (usize::BITS - 1);

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped (SeqCst) for every published job and at shutdown.
    epoch: AtomicU64,
    /// The current job's function; valid while `state` is open or has helpers inside.
    job: UnsafeCell<*const Task>,
    /// Task count of the current job.
    tasks: AtomicUsize,
    /// Next unclaimed task.
    next: AtomicUsize,
    /// Helpers working on the current job, plus [`CLOSED`].
    state: AtomicUsize,
    shutdown: AtomicBool,
    /// A task panicked on a helper during the current job.
    panicked: AtomicBool,
    /// Helpers asleep (or about to sleep) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread holding `SpinPool::serial` while no helper can be
// inside the job (`state` closed and drained), and read only by helpers that joined the job
// through `state`, which the writer waits for before the pointer goes stale.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// Runs `tasks` closures on the caller plus resident helper threads.
pub(crate) struct SpinPool {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One job at a time (the backend may be called from several threads).
    serial: Mutex<()>,
}

impl SpinPool {
    /// A pool of `threads` workers in all (the caller counts as one). Where threads cannot be
    /// spawned (wasm32 without threads) everything runs on the caller.
    pub(crate) fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(std::ptr::null::<fn(usize)>() as *const Task),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            state: AtomicUsize::new(CLOSED),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut helpers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name(format!("lowbit-cpu-{i}"))
                .spawn(move || helper(&s))
            {
                Ok(h) => helpers.push(h),
                Err(e) => {
                    tracing::debug!("no CPU helper thread ({e}); running on fewer threads");
                    break;
                }
            }
        }
        SpinPool {
            shared,
            helpers,
            serial: Mutex::new(()),
        }
    }

    /// Threads that run a job (helpers plus the caller).
    pub(crate) fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Calls `f(t)` for every `t < tasks`, spread over the pool; returns when all are done.
    pub(crate) fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 || self.helpers.is_empty() {
            (0..tasks).for_each(f);
            return;
        }
        let _serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the previous job is closed and drained (see the end of this function), so no
        // helper reads `job`; the pointer is only dereferenced by helpers that join below and
        // that this call waits for, so erasing the lifetime never lets it outlive `f`.
        unsafe {
            *s.job.get() = std::mem::transmute::<&(dyn Fn(usize) + Sync), *const Task>(f);
        }
        s.tasks.store(tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.state.store(0, Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim_tasks(s, f)));
        // No new helpers from here on; wait for those inside to finish their tasks (also when
        // a task panicked: `f` must outlive every use).
        s.state.fetch_or(CLOSED, Ordering::AcqRel);
        while s.state.load(Ordering::Acquire) != CLOSED {
            std::hint::spin_loop();
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a CPU task panicked on a helper thread");
        }
    }
}

fn claim_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    let n = s.tasks.load(Ordering::Relaxed);
    loop {
        let t = s.next.fetch_add(1, Ordering::Relaxed);
        if t >= n {
            break;
        }
        f(t);
    }
}

fn helper(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::SeqCst);
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.epoch.load(Ordering::SeqCst) == seen {
                    drop(s.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            } else {
                std::hint::spin_loop();
            }
        }
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // Join the job unless the caller already closed it.
        let mut st = s.state.load(Ordering::Acquire);
        loop {
            if st & CLOSED != 0 {
                break;
            }
            match s
                .state
                .compare_exchange_weak(st, st + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // SAFETY: joined an open job, so the caller waits for us before `job`
                    // (published before `state` was opened) goes stale.
                    let f = unsafe { &**s.job.get() };
                    if catch_unwind(AssertUnwindSafe(|| claim_tasks(s, f))).is_err() {
                        s.panicked.store(true, Ordering::Release);
                    }
                    s.state.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
                Err(now) => st = now,
            }
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A raw pointer that tasks of one [`SpinPool::run`] share to write disjoint parts of a slice.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(*mut T);

// SAFETY: only used to hand disjoint sub-slices to tasks of one job (see `slice`).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        SharedMut(s.as_mut_ptr())
    }

    /// `len` elements from `start`.
    ///
    /// # Safety
    /// The range lies inside the slice given to [`SharedMut::new`], that slice outlives the
    /// use, and no two tasks ask for overlapping ranges.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = SpinPool::new(threads);
            for tasks in [0usize, 1, 2, 7, 100] {
                for _ in 0..50 {
                    let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                    pool.run(tasks, &|t| {
                        hits[t].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                }
            }
        }
    }

    #[test]
    fn helpers_wake_after_sleeping() {
        let pool = SpinPool::new(2);
        std::thread::sleep(SPIN * 3);
        let sum = AtomicUsize::new(0);
        pool.run(64, &|t| {
            sum.fetch_add(t, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 64 * 63 / 2);
    }

    #[test]
    fn concurrent_callers_are_serialised() {
        let pool = Arc::new(SpinPool::new(3));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let c = AtomicUsize::new(0);
                        p.run(16, &|_| {
                            c.fetch_add(1, Ordering::Relaxed);
                        });
                        assert_eq!(c.load(Ordering::Relaxed), 16);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
