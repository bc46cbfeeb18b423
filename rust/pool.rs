//! A persistent fork-join thread pool for the forward pass.
//!
//! Each token runs a few hundred short parallel sections (every matmul, every
//! attention). Handing each to sleeping threads costs a futex wake-up per
//! section, tens of microseconds, which on a small model is as long as the work
//! itself. So here the calling thread takes part as worker 0, the others spin
//! on a generation counter for a short while after each section (the next one
//! usually comes within microseconds), and only then sleep.
//!
//! `run(f)` calls `f(i, n)` once on each of the n threads. Work is handed out
//! with `claim_units` (or `for_each_unit`): units 0..n go one at a time to
//! whichever thread is free next, so a thread slowed by the machine's other
//! load takes fewer instead of keeping the others waiting at the end (a static
//! split, one range per thread index, cost the matrix products about 4%).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    n_threads: usize,
    /// Bumped once per section; workers wait for it to change.
    generation: AtomicUsize,
    /// Workers still running the current section.
    pending: AtomicUsize,
    /// Set by a worker whose part of the section panicked.
    worker_panicked: AtomicBool,
    /// The current section's job, valid while `pending` > 0.
    job: Mutex<Option<&'static Job>>,
    /// Workers asleep (or about to be) on `wake`; waking is a system call, so
    /// it is only made when someone sleeps.
    sleeping: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    /// One section at a time: callers from several threads take turns.
    caller: Mutex<()>,
}

impl Pool {
    pub fn new(n_threads: usize) -> Pool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            n_threads,
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            worker_panicked: AtomicBool::new(false),
            job: Mutex::new(None),
            sleeping: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        for index in 1..n_threads {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("pycompat-{index}"))
                .spawn(move || worker(shared, index))
                .expect("spawning a kernel thread");
        }
        Pool {
            shared,
            caller: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `f(i, n)` for every thread index i in 0..n, the caller being thread 0,
    /// and returns when all have finished.
    pub fn run<'a>(&self, f: &'a (dyn Fn(usize, usize) + Sync + 'a)) {
        let n = self.shared.n_threads;
        if n == 1 {
            return f(0, 1);
        }
        let _turn = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the reference is only used by workers until `pending` returns to 0,
        // which this function waits for before returning (and so before `f` can go).
        let job: &'static Job = unsafe {
            std::mem::transmute::<&'a (dyn Fn(usize, usize) + Sync + 'a), &'static Job>(f)
        };
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        self.shared.pending.store(n - 1, Ordering::Release);
        // SeqCst pairs with the worker's: either it sees the new generation before
        // it sleeps, or we see it counted as sleeping and wake it.
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if self.shared.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = self
                .shared
                .sleep_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        // Even if our part panics, the workers must be done with `f` before we unwind.
        let ours = panic::catch_unwind(AssertUnwindSafe(|| f(0, n)));
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Err(payload) = ours {
            panic::resume_unwind(payload);
        }
        if self.shared.worker_panicked.swap(false, Ordering::AcqRel) {
            panic!("a kernel thread panicked");
        }
    }
}

fn worker(shared: Arc<Shared>, index: usize) {
    // The generation the pool started at: a section published before this thread
    // got going must still be seen as new.
    let mut seen = 0;
    loop {
        // Spin for the next section, then sleep until one is published.
        let start = Instant::now();
        let mut spins = 0u32;
        while shared.generation.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            // Reading the clock costs more than a spin: look at it every 64th time round.
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let guard = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleeping.fetch_add(1, Ordering::SeqCst);
                if shared.generation.load(Ordering::SeqCst) == seen {
                    drop(shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
                }
                shared.sleeping.fetch_sub(1, Ordering::SeqCst);
            } else {
                std::hint::spin_loop();
            }
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // A panic is reported to the caller (and so to Python) instead of leaving it waiting.
            if panic::catch_unwind(AssertUnwindSafe(|| job(index, shared.n_threads))).is_err() {
                shared.worker_panicked.store(true, Ordering::Release);
            }
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The units a thread takes in `Pool::claim_units`: each `next()` claims the
/// lowest unit that no thread has taken yet, or ends when all are taken.
pub struct Claims<'a> {
    next: &'a AtomicUsize,
    n: usize,
}

impl Iterator for Claims<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        let unit = self.next.fetch_add(1, Ordering::Relaxed);
        (unit < self.n).then_some(unit)
    }
}

impl Pool {
    /// Runs units 0..n on the pool's threads and returns when all are done:
    /// `f(claims)` runs once on every thread (the caller included), even on one
    /// that gets no unit, so it may set up per-thread buffers first; `claims`
    /// then yields the units that thread takes, each unit to one thread only.
    /// Allocates nothing.
    pub fn claim_units(&self, n: usize, f: impl Fn(Claims) + Sync) {
        let next = AtomicUsize::new(0);
        self.run(&|_, _| f(Claims { next: &next, n }));
    }

    /// `f(unit)` for every unit in 0..n, each on the thread that claims it (`claim_units`).
    pub fn for_each_unit(&self, n: usize, f: impl Fn(usize) + Sync) {
        self.claim_units(n, |units| units.for_each(&f));
    }
}

/// A raw pointer that parallel parts may share, each writing its own disjoint range.
pub struct SendPtr<T>(pub *mut T);

// Copy whatever T is (a derive would ask T to be Copy): it is only a pointer.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: users write disjoint ranges only (see each use).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole Sync wrapper).
    pub fn get(self) -> *mut T {
        self.0
    }
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Sets the number of compute threads; only before the first use. Returns false if too late.
pub fn configure(n_threads: usize) -> bool {
    GLOBAL.set(Pool::new(n_threads)).is_ok()
}

/// The environment variable that sets the default number of compute threads
/// (`configure`, e.g. `serve --threads`, still wins over it).
pub const THREADS_ENV: &str = "PYCOMPAT_THREADS";

/// The process's pool, unless configured: `PYCOMPAT_THREADS` threads if that is
/// a positive number, else as many as cores available. Anything else in the
/// variable is ignored; the server's start-up log shows the count in use.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| {
        let asked = std::env::var(THREADS_ENV).ok();
        Pool::new(threads_from_env(asked.as_deref()))
    })
}

fn threads_from_env(value: Option<&str>) -> usize {
    match value.and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) if n > 0 => n,
        _ => thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_every_section() {
        let pool = Pool::new(3);
        let total = AtomicU64::new(0);
        for _ in 0..1000 {
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                total.fetch_add(1 << (i * 20), Ordering::Relaxed);
            });
        }
        assert_eq!(
            total.load(Ordering::Relaxed),
            1000 * (1 + (1 << 20) + (1 << 40))
        );
    }

    #[test]
    fn a_panicking_part_is_reported_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        for bad in [0, 1] {
            let caught =
                panic::catch_unwind(AssertUnwindSafe(|| pool.run(&|i, _| assert_ne!(i, bad))));
            assert!(caught.is_err());
        }
        let count = AtomicU64::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn threads_from_env_takes_positive_counts_only() {
        let cores = thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        assert_eq!(threads_from_env(Some("3")), 3);
        assert_eq!(threads_from_env(Some(" 1 ")), 1);
        for ignored in [None, Some("0"), Some("-2"), Some("many"), Some("")] {
            assert_eq!(threads_from_env(ignored), cores, "{ignored:?}");
        }
    }

    #[test]
    fn every_unit_runs_once_and_every_thread_sets_up() {
        let pool = Pool::new(3);
        for n in [0, 1, 2, 3, 7, 1000] {
            let runs: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            let setups = AtomicU64::new(0);
            pool.claim_units(n, |units| {
                setups.fetch_add(1, Ordering::Relaxed);
                for u in units {
                    runs[u].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert_eq!(setups.load(Ordering::Relaxed), 3, "{n} units");
            assert!(
                runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                "{n} units"
            );
            let total = AtomicU64::new(0);
            pool.for_each_unit(n, |u| {
                total.fetch_add(u as u64 + 1, Ordering::Relaxed);
            });
            assert_eq!(total.load(Ordering::Relaxed), (n * (n + 1) / 2) as u64);
        }
    }
}
