//! The encoder worker pool: long-lived threads (one per encoder session) that run the blocking
//! tokenize + embed + predict work of `Route`, and the bounded queue in front of them.
//!
//! A call takes a queue slot (refused with `Overloaded` when `limit` calls already wait), then a
//! semaphore permit (one per thread), then hands the job to a thread. Everything it holds is an
//! RAII guard, so a caller that goes away at any point (its future dropped by tonic on a
//! `grpc-timeout` or a client cancellation) gives everything back:
//! - dropped while waiting for a permit: its slot is released and counted `skipped_caller_gone`;
//! - the deadline passes while it waits: the wait ends with `DeadlineExceeded`, the slot is
//!   released and counted `skipped_deadline`;
//! - dropped after handing over the job: the thread finds the reply channel closed (or the
//!   deadline passed) before starting and skips the job without computing it.
//!
//! A call with a deadline is only queued if, at the pace jobs ran lately, it can be done in time:
//! the calls already waiting are served `threads` at a time, then it runs; if that would take it
//! past [`HEADROOM`] of the time left before its deadline, it is refused at once
//! (`DeadlineExceeded`, counted `refused_deadline`) instead of waiting to finish too late. Under
//! a steady overload a queue bounded only by the deadline fills until each call starts just
//! before its deadline and finishes just after it: every job runs, and none is in time for the
//! gateway (measured through Envoy, `benches/gateway_overload.rs`). A call that finds nobody
//! waiting is always queued, so jobs keep running and the pace stays known.
//!
//! The permit moves into the job and is released when the work it guards ends, so no more jobs
//! sit in the channel or run than there are threads. A job that panics is caught on its thread
//! (the caller gets `WorkerPanic`, answered INTERNAL); should a thread still die, a guard starts
//! its replacement.
//!
//! NOTE: dedicated long-lived threads (one per session) instead of tokio's blocking pool keep
//! each ONNX session on a warm thread; `block_in_place` was measured too and was slower at
//! concurrency 1 on 2 cores.
use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::RouteError;

/// Counters of a pool, read by `/metrics`.
#[derive(Debug, Default)]
pub struct PoolStats {
    queued: AtomicUsize,
    run: AtomicU64,
    skipped_caller_gone: AtomicU64,
    skipped_deadline: AtomicU64,
    refused_deadline: AtomicU64,
    /// How long a job ran lately: exponentially weighted (1/8 per job), nanoseconds; 0 until
    /// one has run.
    pace_ns: AtomicU64,
    panics: AtomicU64,
    replaced: AtomicU64,
    crashed: AtomicU64,
}

impl PoolStats {
    /// Calls admitted to the queue that have not started or left yet.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Jobs started on a thread (including those that panicked).
    pub fn jobs_run(&self) -> u64 {
        self.run.load(Ordering::Relaxed)
    }

    /// Queued calls whose caller went away before a thread started them: not computed.
    pub fn skipped_caller_gone(&self) -> u64 {
        self.skipped_caller_gone.load(Ordering::Relaxed)
    }

    /// Queued calls whose deadline passed before a thread started them: not computed.
    pub fn skipped_deadline(&self) -> u64 {
        self.skipped_deadline.load(Ordering::Relaxed)
    }

    /// Calls refused before queueing: at the recent pace they could not have been done in
    /// time for their deadline.
    pub fn refused_deadline(&self) -> u64 {
        self.refused_deadline.load(Ordering::Relaxed)
    }

    /// How long a job ran lately (zero until one has run).
    pub fn pace(&self) -> Duration {
        Duration::from_nanos(self.pace_ns.load(Ordering::Relaxed))
    }

    fn record_run(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .pace_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| Some(if old == 0 { took } else { old - old / 8 + took / 8 }));
    }

    /// Panics on the pool's threads: jobs that panicked (caught; the thread went on), and
    /// threads that died (replaced).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Queued calls whose thread died with them (a panic outside the job's own catch): neither
    /// run nor skipped.
    pub fn jobs_crashed(&self) -> u64 {
        self.crashed.load(Ordering::Relaxed)
    }

    /// Threads that died and were replaced.
    pub fn threads_replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }
}

/// How a queued call left the queue.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// A thread started it.
    Run,
    /// Its caller was gone.
    CallerGone,
    /// Its deadline had passed.
    Deadline,
    /// Its thread died while holding it.
    Crashed,
    /// The pool is shutting down (not a skip: counted nowhere).
    Stopped,
}

/// A place in the queue: counted in `queued` while it lives; leaving is counted exactly once,
/// and a slot dropped without leaving (its caller's future was dropped) counts as caller gone.
struct Slot {
    stats: Arc<PoolStats>,
    left: bool,
}

impl Slot {
    fn enter(stats: &Arc<PoolStats>, limit: usize) -> Result<Self, RouteError> {
        stats
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .map_err(|waiting| RouteError::Overloaded { waiting, limit })?;
        Ok(Slot { stats: Arc::clone(stats), left: false })
    }

    fn leave(mut self, how: Leave) {
        self.record(how);
    }

    fn record(&mut self, how: Leave) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        self.stats.queued.fetch_sub(1, Ordering::AcqRel);
        let counter = match how {
            Leave::Run => &self.stats.run,
            Leave::CallerGone => &self.stats.skipped_caller_gone,
            Leave::Deadline => &self.stats.skipped_deadline,
            Leave::Crashed => &self.stats.crashed,
            Leave::Stopped => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Dropped while its thread unwinds: the work crashed the thread, its caller did not go.
        self.record(if std::thread::panicking() { Leave::Crashed } else { Leave::CallerGone });
    }
}

/// The typed half of a job: the work and its reply channel.
trait Work: Send {
    /// The caller stopped waiting for the reply.
    fn caller_gone(&self) -> bool;
    /// Answers with an error instead of running.
    fn refuse(self: Box<Self>, e: RouteError);
    /// Runs the work and sends its result; a panic is caught and answered `WorkerPanic`.
    /// Returns the panic message if it panicked.
    fn run(self: Box<Self>) -> Option<String>;
}

struct Task<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T, RouteError>>,
}

impl<T: Send, F: FnOnce() -> T + Send> Work for Task<T, F> {
    fn caller_gone(&self) -> bool {
        self.reply.is_closed()
    }

    fn refuse(self: Box<Self>, e: RouteError) {
        let _ = self.reply.send(Err(e));
    }

    fn run(self: Box<Self>) -> Option<String> {
        let Task { f, reply } = *self;
        let mut reply = Some(reply);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let value = f();
            if let Some(r) = reply.take() {
                let _ = r.send(Ok(value));
            }
        }));
        let payload = outcome.err()?;
        let message = panic_message(payload.as_ref());
        if let Some(r) = reply.take() {
            let _ = r.send(Err(RouteError::WorkerPanic(message.clone())));
        }
        Some(message)
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".into(),
    }
}

/// One queued call: its work, deadline, queue slot and permit (released when it ends).
struct Job {
    work: Box<dyn Work>,
    deadline: Option<Instant>,
    slot: Slot,
    _permit: OwnedSemaphorePermit,
}

impl Job {
    /// Skips the job if its caller is gone or its deadline passed, else runs it.
    fn execute(self, stats: &PoolStats, thread: &str) {
        let Job { work, deadline, slot, _permit } = self;
        if work.caller_gone() {
            slot.leave(Leave::CallerGone);
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            slot.leave(Leave::Deadline);
            work.refuse(RouteError::DeadlineExceeded);
        } else {
            slot.leave(Leave::Run);
            let started = Instant::now();
            let panicked = work.run();
            stats.record_run(started.elapsed());
            if let Some(message) = panicked {
                stats.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(thread, panic = %message, "a routing job panicked; its request gets INTERNAL and the thread goes on");
            }
        }
        // `_permit` is dropped here, after the work it guards.
    }
}

type Receiver = Arc<Mutex<mpsc::Receiver<Job>>>;

/// What a worker thread needs; also what its replacement needs.
#[derive(Clone)]
struct Worker {
    name: String,
    jobs: Receiver,
    stats: Arc<PoolStats>,
}

impl Worker {
    fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new().name(self.name.clone()).spawn(move || {
            let _replace_if_dying = Replacement(self.clone());
            loop {
                let job = match self.jobs.lock().unwrap_or_else(PoisonError::into_inner).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                job.execute(&self.stats, &self.name);
            }
        })?;
        Ok(())
    }
}

/// Starts a new worker when the thread it lives on unwinds (a panic escaped `Job::execute`).
struct Replacement(Worker);

impl Drop for Replacement {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stats.panics.fetch_add(1, Ordering::Relaxed);
            self.0.stats.replaced.fetch_add(1, Ordering::Relaxed);
            match self.0.clone().spawn() {
                Ok(()) => tracing::error!(thread = %self.0.name, "a routing thread died; started its replacement"),
                Err(e) => tracing::error!(thread = %self.0.name, error = %e, "a routing thread died and could not be replaced"),
            }
        }
    }
}

/// The share of the time left before a call's deadline that its wait and its own run may take
/// at the recent pace; the rest is kept for a slower run than the recent ones and for the
/// gateway's side (Envoy's `message_timeout` starts before Pointsman has the body).
pub const HEADROOM: f64 = 0.75;

/// The pool: `threads` workers, as many permits, and a queue of at most `limit` waiting calls.
pub struct WorkerPool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    threads: usize,
    limit: usize,
    stats: Arc<PoolStats>,
}

impl WorkerPool {
    /// Starts `threads` threads named `<name>-<i>`; at most `limit` calls wait for one.
    /// The threads end when the pool is dropped and the jobs already handed over are done.
    pub fn start(name: &str, threads: usize, limit: usize) -> Result<Self, RouteError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx: Receiver = Arc::new(Mutex::new(rx));
        let stats = Arc::new(PoolStats::default());
        for i in 0..threads {
            Worker { name: format!("{name}-{i}"), jobs: Arc::clone(&rx), stats: Arc::clone(&stats) }
                .spawn()
                .map_err(|e| RouteError::Worker(format!("starting thread {name}-{i}: {e}")))?;
        }
        Ok(Self { jobs: tx, permits: Arc::new(Semaphore::new(threads)), threads, limit, stats })
    }

    /// The pool's counters.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Runs `f` on a pool thread once one is free and returns its result.
    ///
    /// Errors: `Overloaded` when `limit` calls already wait; `DeadlineExceeded` when `deadline`
    /// passes before a thread starts `f` (then `f` never runs), or at once when the calls
    /// waiting ahead and `f` itself would, at the recent pace, take it past [`HEADROOM`] of the
    /// time left; `WorkerPanic` when `f` panics;
    /// `Worker` when the pool is shutting down. Dropping the returned future at any point
    /// releases the queue slot and, if `f` has not started, keeps it from running.
    pub async fn run<T, F>(&self, deadline: Option<Instant>, f: F) -> Result<T, RouteError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                return Err(RouteError::DeadlineExceeded);
            }
            let ahead = self.stats.queue_depth();
            if ahead > 0 {
                let rounds = u32::try_from(ahead / self.threads.max(1) + 1).unwrap_or(u32::MAX);
                if self.stats.pace().saturating_mul(rounds) > (d - now).mul_f64(HEADROOM) {
                    self.stats.refused_deadline.fetch_add(1, Ordering::Relaxed);
                    return Err(RouteError::DeadlineExceeded);
                }
            }
        }
        let slot = Slot::enter(&self.stats, self.limit)?;
        let acquire = Arc::clone(&self.permits).acquire_owned();
        let permit = match deadline {
            None => acquire.await,
            Some(d) => match tokio::time::timeout_at(d.into(), acquire).await {
                Ok(p) => p,
                Err(_) => {
                    slot.leave(Leave::Deadline);
                    return Err(RouteError::DeadlineExceeded);
                }
            },
        };
        let Ok(permit) = permit else {
            slot.leave(Leave::Stopped);
            return Err(RouteError::Worker("the encoder pool is closed".into()));
        };
        let (reply, answer) = oneshot::channel();
        // The caller's span (its request id) goes with the job, so the thread's log lines carry it.
        let span = tracing::Span::current();
        let f = move || {
            let _in_request = span.enter();
            f()
        };
        let job = Job { work: Box::new(Task { f, reply }), deadline, slot, _permit: permit };
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            job.slot.leave(Leave::Stopped);
            return Err(RouteError::Worker("the encoder workers have stopped".into()));
        }
        answer.await.map_err(|_| RouteError::Worker("an encoder worker dropped a request".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` for up to 10 s.
    async fn until(f: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "condition not reached in 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Blocks the pool's `n` threads until the returned sender is dropped or sent to; waits
    /// until they all run.
    async fn occupy(pool: &Arc<WorkerPool>, n: usize) -> (std::sync::mpsc::Sender<()>, Vec<tokio::task::JoinHandle<()>>) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let started = pool.stats().jobs_run();
        let mut handles = Vec::new();
        for _ in 0..n {
            let (pool, gate) = (Arc::clone(pool), Arc::clone(&gate));
            handles.push(tokio::spawn(async move {
                pool.run(None, move || {
                    let _ = gate.lock().unwrap().recv();
                })
                .await
                .unwrap();
            }));
        }
        until(|| pool.stats().jobs_run() == started + n as u64).await;
        (release, handles)
    }

    #[tokio::test]
    async fn a_panicking_job_answers_worker_panic_and_the_pool_keeps_serving() {
        let pool = WorkerPool::start("test-panic", 1, 4).unwrap();
        let err = pool.run(None, || -> u32 { panic!("boom in the head") }).await.unwrap_err();
        assert!(matches!(&err, RouteError::WorkerPanic(m) if m == "boom in the head"), "{err:?}");
        assert_eq!(err.label(), "worker_panic");
        // The only thread survived: the next job runs on it.
        let name = pool.run(None, || std::thread::current().name().map(String::from)).await.unwrap();
        assert_eq!(name.as_deref(), Some("test-panic-0"));
        assert_eq!(pool.run(None, || 41 + 1).await.unwrap(), 42);
        let s = pool.stats();
        assert_eq!((s.panics(), s.jobs_run(), s.queue_depth(), s.threads_replaced()), (1, 3, 0, 0));
    }

    #[tokio::test]
    async fn a_thread_that_dies_is_replaced() {
        /// Work whose check itself panics: the panic escapes `catch_unwind` and kills the thread.
        struct Poison;
        impl Work for Poison {
            fn caller_gone(&self) -> bool {
                panic!("outside the job")
            }
            fn refuse(self: Box<Self>, _: RouteError) {}
            fn run(self: Box<Self>) -> Option<String> {
                None
            }
        }
        let pool = WorkerPool::start("test-replace", 1, 4).unwrap();
        let permit = Arc::clone(&pool.permits).acquire_owned().await.unwrap();
        let slot = Slot::enter(&pool.stats, pool.limit).unwrap();
        pool.jobs.send(Job { work: Box::new(Poison), deadline: None, slot, _permit: permit }).unwrap();
        until(|| pool.stats().threads_replaced() == 1).await;
        // The permit and the slot came back while unwinding, and a new thread serves.
        assert_eq!((pool.stats().queue_depth(), pool.stats().panics()), (0, 1));
        // Counted as crashed, not as a skip for a caller that went away.
        let st = pool.stats();
        assert_eq!((st.jobs_crashed(), st.skipped_caller_gone(), st.skipped_deadline(), st.jobs_run()), (1, 0, 0, 0));
        let name = pool.run(None, || std::thread::current().name().map(String::from)).await.unwrap();
        assert_eq!(name.as_deref(), Some("test-replace-0"));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_drained_one_accepts_again() {
        let pool = Arc::new(WorkerPool::start("test-full", 1, 2).unwrap());
        let (release, running) = occupy(&pool, 1).await;
        // The running job left the queue; two more may wait, the third is refused.
        let waiting: Vec<_> = (0..2)
            .map(|i| {
                tokio::spawn({
                    let p = Arc::clone(&pool);
                    async move { p.run(None, move || i).await }
                })
            })
            .collect();
        until(|| pool.stats().queue_depth() == 2).await;
        let err = pool.run(None, || 0).await.unwrap_err();
        assert!(matches!(err, RouteError::Overloaded { waiting: 2, limit: 2 }), "{err:?}");
        drop(release);
        for (i, w) in waiting.into_iter().enumerate() {
            assert_eq!(w.await.unwrap().unwrap(), i);
        }
        for r in running {
            r.await.unwrap();
        }
        assert_eq!(pool.stats().queue_depth(), 0);
        assert_eq!(pool.run(None, || 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn callers_that_go_away_while_queued_release_their_slot_and_are_not_computed() {
        let pool = Arc::new(WorkerPool::start("test-gone", 1, 8).unwrap());
        let (release, running) = occupy(&pool, 1).await;
        let computed = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (p, c) = (Arc::clone(&pool), Arc::clone(&computed));
                tokio::spawn(async move {
                    p.run(None, move || {
                        c.fetch_add(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        until(|| pool.stats().queue_depth() == 8).await;
        // The queue is full; every caller goes away (as tonic drops a handler future).
        for c in &callers {
            c.abort();
        }
        for c in callers {
            assert!(c.await.unwrap_err().is_cancelled());
        }
        assert_eq!(pool.stats().queue_depth(), 0, "aborted callers left their slots behind");
        assert_eq!(pool.stats().skipped_caller_gone(), 8);
        drop(release);
        for r in running {
            r.await.unwrap();
        }
        assert_eq!(pool.run(None, || 1).await.unwrap(), 1);
        assert_eq!(computed.load(Ordering::SeqCst), 0, "work for gone callers was computed");
    }

    #[tokio::test]
    async fn a_deadline_bounds_the_wait_and_the_work_never_runs() {
        let pool = Arc::new(WorkerPool::start("test-deadline", 1, 8).unwrap());
        let (release, running) = occupy(&pool, 1).await;
        let computed = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&computed);
        let t = Instant::now();
        let err = pool
            .run(Some(Instant::now() + Duration::from_millis(50)), move || {
                c.fetch_add(1, Ordering::SeqCst);
            })
            .await
            .unwrap_err();
        assert!(matches!(err, RouteError::DeadlineExceeded), "{err:?}");
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!((pool.stats().skipped_deadline(), pool.stats().queue_depth()), (1, 0));
        // A deadline already passed is refused at once, without queueing.
        let past = Instant::now().checked_sub(Duration::from_millis(1));
        assert!(matches!(pool.run(past, || ()).await, Err(RouteError::DeadlineExceeded)));
        drop(release);
        for r in running {
            r.await.unwrap();
        }
        assert_eq!(computed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_call_that_could_not_be_done_in_time_is_refused_at_once_and_never_queued() {
        let pool = Arc::new(WorkerPool::start("test-pace", 1, 8).unwrap());
        // Jobs have run for about 100 ms lately.
        pool.run(None, || std::thread::sleep(Duration::from_millis(100))).await.unwrap();
        let pace = pool.stats().pace();
        assert!(pace >= Duration::from_millis(100), "{pace:?}");
        let (release, running) = occupy(&pool, 1).await;
        let spawn = |deadline: Option<Instant>, v: u32| {
            let p = Arc::clone(&pool);
            tokio::spawn(async move { p.run(deadline, move || v).await })
        };
        let ahead = spawn(None, 1);
        until(|| pool.stats().queue_depth() == 1).await;
        // The call ahead, then its own run: two paces, more than HEADROOM of 1.5 paces.
        let err = pool.run(Some(Instant::now() + pace.mul_f64(1.5)), || 2).await.unwrap_err();
        assert!(matches!(err, RouteError::DeadlineExceeded), "{err:?}");
        let s = pool.stats();
        assert_eq!((s.refused_deadline(), s.skipped_deadline(), s.queue_depth()), (1, 0, 1));
        // With time enough it waits its turn and runs.
        let later = spawn(Some(Instant::now() + Duration::from_secs(60)), 3);
        until(|| pool.stats().queue_depth() == 2).await;
        drop(release);
        for r in running {
            r.await.unwrap();
        }
        assert_eq!((ahead.await.unwrap().unwrap(), later.await.unwrap().unwrap()), (1, 3));
        let s = pool.stats();
        assert_eq!((s.refused_deadline(), s.skipped_deadline(), s.jobs_run(), s.queue_depth()), (1, 0, 4, 0));
    }

    #[tokio::test]
    async fn a_handed_over_job_whose_caller_is_gone_or_late_is_skipped_by_the_thread() {
        let pool = WorkerPool::start("test-skip", 1, 8).unwrap();
        let computed = Arc::new(AtomicUsize::new(0));
        // Hold the only thread with a job handed over directly, so the next two sit in the channel.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (reply, _keep) = oneshot::channel();
        let hold = Task {
            f: move || {
                let _ = gate.recv();
            },
            reply,
        };
        let permit = |p: &WorkerPool| Arc::clone(&p.permits).try_acquire_owned().unwrap();
        let job = |p: &WorkerPool, work: Box<dyn Work>, deadline: Option<Instant>| Job {
            work,
            deadline,
            slot: Slot::enter(&p.stats, p.limit).unwrap(),
            _permit: permit(p),
        };
        pool.jobs.send(job(&pool, Box::new(hold), None)).unwrap();
        until(|| pool.stats().jobs_run() == 1).await;
        pool.permits.add_permits(2);
        let (gone_reply, gone_answer) = oneshot::channel::<Result<(), RouteError>>();
        let c = Arc::clone(&computed);
        pool.jobs.send(job(&pool, Box::new(Task { f: move || _ = c.fetch_add(1, Ordering::SeqCst), reply: gone_reply }), None)).unwrap();
        drop(gone_answer);
        let (late_reply, late_answer) = oneshot::channel::<Result<(), RouteError>>();
        let c = Arc::clone(&computed);
        let soon = Some(Instant::now() + Duration::from_millis(20));
        pool.jobs.send(job(&pool, Box::new(Task { f: move || _ = c.fetch_add(1, Ordering::SeqCst), reply: late_reply }), soon)).unwrap();
        assert_eq!(pool.stats().queue_depth(), 2);
        std::thread::sleep(Duration::from_millis(30));
        drop(release);
        assert!(matches!(late_answer.await.unwrap(), Err(RouteError::DeadlineExceeded)));
        until(|| pool.stats().queue_depth() == 0).await;
        let s = pool.stats();
        assert_eq!((s.jobs_run(), s.skipped_caller_gone(), s.skipped_deadline()), (1, 1, 1));
        assert_eq!(computed.load(Ordering::SeqCst), 0);
    }
}
