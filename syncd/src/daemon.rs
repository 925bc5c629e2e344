//! The daemon: watch + rescan, readiness, journal, dispatch, retention, shutdown.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::dest::Dest;
use crate::error::{Result, SyncError};
use crate::journal::{self, FileRow, Journal, NewFile};
use crate::metrics::{self, Metrics};
use crate::ratelimit::RateLimiter;
use crate::retention::retention;
use crate::retry::Blame;
use crate::scan::Scanner;
use crate::upload::{Outcome, Worker};

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOpts {
    /// Drain the backlog and exit.
    pub once: bool,
}

/// What a run did (for `--once`).
#[derive(Debug, Default)]
pub struct Report {
    pub uploaded: u64,
    /// Files left queued because their upload failed (in `--once`).
    pub failed: u64,
    /// Files not yet settled when `--once` gave up waiting.
    pub unsettled: usize,
    /// The destination refused us.
    pub destination_error: Option<SyncError>,
}

/// `--dry-run`: print what would be uploaded where; touches nothing.
pub fn dry_run(cfg: &Config) -> Result<usize> {
    let journal = if cfg.journal.exists() {
        Some(Journal::open_read_only(&cfg.journal)?)
    } else {
        None
    };
    let mut scanner = Scanner::new(cfg);
    let mut out = Vec::new();
    scanner.scan_all(journal.as_ref(), &mut out);
    let dest = cfg.destination();
    let base = match &dest {
        crate::config::Destination::S3 { bucket, .. } => format!("s3://{bucket}"),
        crate::config::Destination::File { dir } => format!("file://{}", dir.display()),
    };
    out.sort_by_key(|f| (f.is_manifest, f.path.clone()));
    out.dedup_by(|a, b| a.path == b.path);
    for f in &out {
        let how = if f.size > cfg.upload.multipart_threshold {
            format!("multipart, {} parts", f.size.div_ceil(cfg.upload.part_size))
        } else {
            "single PUT".to_string()
        };
        println!(
            "would upload {} -> {base}/{} ({} bytes, {how})",
            f.path.display(),
            f.key,
            f.size
        );
    }
    for p in scanner.unsettled.keys() {
        println!("not ready yet (settling) {}", p.display());
    }
    for (p, reason) in scanner.metrics().refusals() {
        println!("refused ({}) {}", reason.as_str(), p.display());
    }
    Ok(out.len())
}

/// Run the daemon until `cancel` (or, with `--once`, until the backlog is drained).
pub async fn run(cfg: Config, opts: RunOpts, cancel: CancellationToken) -> Result<Report> {
    let cfg = Arc::new(cfg);
    let journal = Journal::open(&cfg.journal)?;
    let metrics = Arc::new(Metrics::new());
    let dest = Arc::new(Dest::new(&cfg, metrics.clone()).await);
    let worker = Arc::new(Worker {
        cfg: cfg.clone(),
        journal: journal.clone(),
        dest: dest.clone(),
        limiter: Arc::new(RateLimiter::new(cfg.upload.rate_limit_bytes_per_sec)),
        metrics: metrics.clone(),
        transfers: Arc::new(tokio::sync::Semaphore::new(cfg.upload.max_files)),
    });
    info!(destination = %dest.describe(), watch = ?cfg.watch, once = opts.once, "edgemask-syncd starting");
    let aux = serve_metrics(&cfg, &metrics, &cancel).await?;

    // The destination: refuse early and clearly.
    let dest_down = match check_destination(&dest, &cfg, &journal, &metrics, &cancel).await {
        Ok(()) => None,
        Err(e @ SyncError::Fatal { .. }) if opts.once => {
            return Ok(Report {
                destination_error: Some(e),
                ..Report::default()
            });
        }
        Err(e @ SyncError::Fatal { .. }) => Some((e.to_string(), Instant::now())),
        Err(e) if cancel.is_cancelled() => {
            debug!(error = %e, "cancelled during start");
            return Ok(Report::default());
        }
        Err(e) => {
            error!(error = %e, "destination not reachable; will keep retrying");
            Some((e.to_string(), Instant::now()))
        }
    };

    // Watch first, then scan, so nothing falls between the two.
    let watch = Watch::start(&cfg.watch)?;
    let scanner = first_scan(&cfg, &journal, &metrics)?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    Daemon {
        timers: Timers::new(&cfg, &metrics),
        cfg,
        opts,
        cancel,
        journal,
        metrics,
        dest,
        worker,
        aux,
        watch,
        scanner,
        dispatch: Dispatch::default(),
        dest_down,
        report: Report::default(),
    }
    .run()
    .await
}

/// The Prometheus endpoint (`metrics.listen`), as the first of the daemon's side tasks.
async fn serve_metrics(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<JoinSet<()>> {
    let mut aux = JoinSet::new();
    if let Some(listen) = &cfg.metrics.listen {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| SyncError::Config(format!("metrics.listen = {listen:?}: {e}")))?;
        aux.spawn(metrics::serve(l, metrics.clone(), cancel.clone()));
    }
    Ok(aux)
}

/// The scan at start, its ready files recorded; the scanner goes on from there.
fn first_scan(cfg: &Config, journal: &Journal, metrics: &Arc<Metrics>) -> Result<Scanner> {
    // Refusals are listed for the files there now: the first scan finds them again.
    let _ = journal.clear_refusals(None, "");
    let mut scanner = Scanner::new(cfg).with_metrics(metrics.clone());
    let mut fresh = Vec::new();
    scanner.scan_all(Some(journal), &mut fresh);
    insert_ready(journal, &mut fresh)?;
    Ok(scanner)
}

/// The daemon once started: its loop waits for the next event (watcher events, a job that
/// ended, the 200 ms tick) and hands it to the method for it.
struct Daemon {
    cfg: Arc<Config>,
    opts: RunOpts,
    cancel: CancellationToken,
    journal: Journal,
    metrics: Arc<Metrics>,
    dest: Arc<Dest>,
    worker: Arc<Worker>,
    /// Tasks besides the uploads: the metrics endpoint, aborts of dropped uploads.
    aux: JoinSet<()>,
    watch: Watch,
    scanner: Scanner,
    dispatch: Dispatch,
    /// The destination refused us: why, and since when. Nothing is dispatched meanwhile.
    dest_down: Option<(String, Instant)>,
    timers: Timers,
    report: Report,
}

/// The file watcher and what it hands over.
struct Watch {
    watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<notify::Event>,
    /// Events were dropped (the watcher's queue or ours overflowed): rescan everything.
    overflow: Arc<AtomicBool>,
}

/// The upload jobs, and the queue they are started from.
#[derive(Default)]
struct Dispatch {
    jobs: JoinSet<(i64, Outcome)>,
    inflight: HashSet<i64>,
    /// Files whose upload failed: not retried before then.
    not_before: HashMap<i64, Instant>,
    /// `--once`: files whose upload failed, left queued.
    given_up: HashSet<i64>,
    blame: Blame,
    /// A batch read of the journal's queue.
    queue: VecDeque<FileRow>,
}

/// The periodic chores: when each last ran.
struct Timers {
    tick: tokio::time::Interval,
    rescan_every: Duration,
    last_scan: Instant,
    last_prune: Instant,
    last_retention: Instant,
    /// When the rate was last sampled, the bytes sent then, and the smoothed rate.
    last_rate: (Instant, u64, f64),
    last_status: Instant,
    last_dest_check: Instant,
    hw_warned: Instant,
    /// systemd's watchdog: whether it is on, its interval, the last ping.
    watchdog: bool,
    watchdog_usec: u64,
    last_ping: Instant,
    /// `--once`: how long to wait for files still settling.
    once_deadline: Instant,
}

impl Watch {
    /// Watch every root (created if missing), recursively. Only events that can change
    /// readiness are kept; a full queue raises `overflow` instead of blocking the watcher.
    fn start(roots: &[PathBuf]) -> Result<Watch> {
        let (tx, events) = mpsc::channel::<notify::Event>(8192);
        let overflow = Arc::new(AtomicBool::new(false));
        let ov = overflow.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.need_rescan() => ov.store(true, Ordering::Relaxed),
            Ok(ev) if !event_matters(&ev.kind) => {}
            Ok(ev) => {
                if tx.try_send(ev).is_err() {
                    ov.store(true, Ordering::Relaxed);
                }
            }
            Err(_) => ov.store(true, Ordering::Relaxed),
        };
        // A symlinked directory is not watched (notify follows links by default): what lies
        // behind it is not ours.
        let mut watcher =
            notify::RecommendedWatcher::new(handler, notify::Config::default().with_follow_symlinks(false))?;
        for root in roots {
            std::fs::create_dir_all(root).map_err(|e| SyncError::io(root, e))?;
            watcher.watch(root, RecursiveMode::Recursive)?;
        }
        Ok(Watch {
            watcher,
            events,
            overflow,
        })
    }
}

impl Timers {
    fn new(cfg: &Config, metrics: &Metrics) -> Timers {
        let now = Instant::now();
        let mut watchdog_usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Timers {
            tick,
            rescan_every: Duration::from_secs_f64(cfg.readiness.rescan_secs),
            last_scan: now,
            // The chores that are due at start run at the first tick.
            last_prune: now - Duration::from_secs(3600),
            last_retention: now - Duration::from_secs(60),
            last_rate: (now, metrics.bytes_sent(), 0.0),
            last_status: now - Duration::from_secs(60),
            last_dest_check: now,
            hw_warned: now - Duration::from_secs(3600),
            watchdog,
            watchdog_usec,
            last_ping: now,
            once_deadline: now + cfg.settle() * 2 + Duration::from_secs(1),
        }
    }
}

impl Daemon {
    async fn run(mut self) -> Result<Report> {
        loop {
            let mut fresh = Vec::new();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(ev) = self.watch.events.recv() => self.on_events(ev, &mut fresh),
                Some(res) = self.dispatch.jobs.join_next(), if !self.dispatch.jobs.is_empty() => {
                    self.on_job_end(res)
                }
                _ = self.timers.tick.tick() => self.on_tick(&mut fresh).await?,
            }
            if self.after_event(&mut fresh)? {
                break;
            }
        }
        Ok(self.shutdown().await)
    }

    /// A batch of watcher events: one look per path; a directory is walked only when it is
    /// new here (created or moved in: files may have landed before its watch).
    fn on_events(&mut self, first: notify::Event, fresh: &mut Vec<NewFile>) {
        let mut events = vec![first];
        while events.len() < 4096 {
            match self.watch.events.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let (mut dirs, mut paths) = (HashSet::new(), HashSet::new());
        for ev in events {
            let arrived = new_entry(&ev.kind);
            for p in ev.paths {
                // Not `is_dir()`: it follows a symlink to a directory elsewhere.
                if arrived && std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    dirs.insert(p);
                } else {
                    paths.insert(p);
                }
            }
        }
        for d in &dirs {
            self.scanner
                .scan_tree(d, Some(&self.journal), fresh, &mut HashSet::new());
        }
        for p in &paths {
            if !dirs.iter().any(|d| p.starts_with(d)) {
                self.scanner.consider(p, Some(&self.journal), fresh);
            }
        }
    }

    /// An upload job ended: forget it, or schedule its retry, or stop the destination.
    fn on_job_end(&mut self, res: std::result::Result<(i64, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match res {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "upload task failed");
                return;
            }
        };
        let d = &mut self.dispatch;
        d.inflight.remove(&id);
        self.metrics.touch();
        let cap_ms = self.cfg.retry.cap_ms;
        match outcome {
            Outcome::Done => {
                d.not_before.remove(&id);
                d.blame.done(id);
            }
            Outcome::Cancelled => {}
            Outcome::Later(e) => {
                if self.opts.once {
                    d.given_up.insert(id);
                    self.report.failed += 1;
                } else {
                    d.not_before
                        .insert(id, Instant::now() + Duration::from_millis(cap_ms));
                }
                debug!(id, error = %e, "file re-queued");
            }
            Outcome::DestinationDown(e) if !self.opts.once && !d.blame.fatal(id) => {
                error!(id, error = %e,
                       "refused again for this file only, though the destination passed its check; the file waits, the others go on");
                let wait = Duration::from_millis(cap_ms.saturating_mul(10));
                d.not_before.insert(id, Instant::now() + wait);
            }
            Outcome::DestinationDown(e) => self.stop_destination(e),
        }
    }

    /// The destination refuses uploads: dispatch nothing until it passes its check again.
    fn stop_destination(&mut self, e: SyncError) {
        if self.dest_down.is_none() {
            error!(destination = %self.dest.describe(), error = %e,
                   "destination refuses uploads; stopping it, every file is kept");
            let _ = self.journal.set_meta("destination_error", &e.to_string());
        }
        self.metrics.set_dest_up(false);
        self.dest_down = Some((e.to_string(), Instant::now()));
        self.timers.last_dest_check = Instant::now();
        if self.opts.once && self.report.destination_error.is_none() {
            self.report.destination_error = Some(e);
        }
    }

    /// The 200 ms tick: files still settling, then each periodic chore that is due.
    async fn on_tick(&mut self, fresh: &mut Vec<NewFile>) -> Result<()> {
        self.scanner.recheck(Some(&self.journal), fresh);
        if self.timers.last_scan.elapsed() >= self.timers.rescan_every {
            // Directory walks and the journal are blocking I/O: off the runtime's worker, so
            // requests in flight keep moving during a long scan.
            tokio::task::block_in_place(|| self.scanner.scan_all(Some(&self.journal), fresh));
            self.timers.last_scan = Instant::now();
        }
        self.prune()?;
        self.retain()?;
        self.publish()?;
        self.ping_watchdog();
        self.recheck_destination().await;
        Ok(())
    }

    /// Once a minute: forget the rows of files gone for over `retain.forget_after_days`.
    fn prune(&mut self) -> Result<()> {
        let forget = self.cfg.retain.forget_after_days;
        if forget > 0.0 && self.timers.last_prune.elapsed() >= Duration::from_secs(60) {
            // Batched, so a backlog of old rows never holds the loop for long.
            let older = (forget * 86_400.0) as u64;
            let n = tokio::task::block_in_place(|| self.journal.prune(older, 10_000))?;
            if n > 0 {
                debug!(
                    rows = n,
                    "journal: forgot files gone for over retain.forget_after_days"
                );
            }
            self.timers.last_prune = Instant::now();
        }
        Ok(())
    }

    /// Every 2 s: [`retention`], and the aborts of the multipart uploads of dropped files.
    fn retain(&mut self) -> Result<()> {
        if self.timers.last_retention.elapsed() < Duration::from_secs(2) {
            return Ok(());
        }
        let aborts = tokio::task::block_in_place(|| {
            retention(
                &self.cfg,
                &self.journal,
                &self.metrics,
                &self.dispatch.inflight,
                &mut self.timers.hw_warned,
            )
        })?;
        for (key, upload_id) in aborts {
            // A dropped file's multipart upload: abort it now (else the next start's orphan
            // sweep does).
            let (d, c) = (self.dest.clone(), self.cancel.clone());
            self.aux.spawn(async move {
                if let Dest::S3(s) = &*d {
                    s.abort(&key, &upload_id, &c).await;
                }
            });
        }
        self.timers.last_retention = Instant::now();
        Ok(())
    }

    /// Every second: the upload rate and the queue gauges; every 5 s, systemd's STATUS.
    fn publish(&mut self) -> Result<()> {
        let (t, b, r) = self.timers.last_rate;
        if t.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        let now_b = self.metrics.bytes_sent();
        let inst = (now_b - b) as f64 / t.elapsed().as_secs_f64();
        let rate = 0.7 * r + 0.3 * inst;
        self.metrics.set_rate(rate);
        self.timers.last_rate = (Instant::now(), now_b, rate);
        let s = self.journal.summary()?;
        let count = |state: &str| s.counts.get(state).copied().unwrap_or(0);
        let open = count("pending") + count("uploading");
        let oldest = s
            .oldest_pending_ready_at
            .map(|t| (journal::now_secs() - t).max(0) as u64)
            .unwrap_or(0);
        let bad = count("conflict") + count("rejected");
        self.metrics.set_queue(open, s.pending_bytes, oldest, bad);
        if self.timers.last_status.elapsed() >= Duration::from_secs(5) {
            let st = format!(
                "queue {open} files ({} bytes), {} uploaded, {:.1} MB/s{}",
                s.pending_bytes,
                self.metrics.files_uploaded(),
                rate / 1e6,
                if self.dest_down.is_some() {
                    ", destination DOWN"
                } else {
                    ""
                }
            );
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&st)]);
            self.timers.last_status = Instant::now();
        }
        Ok(())
    }

    /// Watchdog: alive and either idle or moving (bytes or scheduled retries).
    fn ping_watchdog(&mut self) {
        let t = &mut self.timers;
        if t.watchdog && t.last_ping.elapsed() >= Duration::from_micros(t.watchdog_usec / 3) {
            let healthy =
                self.dispatch.jobs.is_empty() || self.metrics.since_progress() < t.watchdog_usec as f64 / 1e6;
            if healthy {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                t.last_ping = Instant::now();
            }
        }
    }

    /// A stopped destination is checked again every `retry.cap_ms`.
    async fn recheck_destination(&mut self) {
        let cap = Duration::from_millis(self.cfg.retry.cap_ms);
        if let Some((_, since)) = &self.dest_down
            && !self.opts.once
            && since.elapsed() >= cap
            && self.timers.last_dest_check.elapsed() >= cap
        {
            self.timers.last_dest_check = Instant::now();
            if check_destination(&self.dest, &self.cfg, &self.journal, &self.metrics, &self.cancel)
                .await
                .is_ok()
            {
                info!(destination = %self.dest.describe(), "destination accepts uploads again");
                self.dest_down = None;
                self.dispatch.blame.check_passed();
            }
        }
    }

    /// After every event but shutdown: a full rescan if the watcher dropped events, the
    /// files found ready recorded, uploads started. True when `--once` is done.
    fn after_event(&mut self, fresh: &mut Vec<NewFile>) -> Result<bool> {
        if self.watch.overflow.swap(false, Ordering::Relaxed) {
            warn!("watcher dropped events; full rescan");
            self.scanner.scan_all(Some(&self.journal), fresh);
            self.timers.last_scan = Instant::now();
        }
        if insert_ready(&self.journal, fresh)? {
            self.dispatch.queue.clear(); // new work: take the journal's order again
        }
        self.start_jobs()?;
        self.once_done()
    }

    /// Start uploads up to the limit. Candidates come from a batch read of the journal's
    /// queue, refilled when used up: one read per batch of jobs, not one per finished job.
    fn start_jobs(&mut self) -> Result<()> {
        // Jobs in flight: the transfers plus the files in their metadata phases (checks).
        let max_jobs = self.cfg.upload.max_files + self.cfg.upload.max_checks;
        let d = &mut self.dispatch;
        if self.dest_down.is_some() || self.cancel.is_cancelled() || d.jobs.len() >= max_jobs {
            return Ok(());
        }
        let now = Instant::now();
        d.not_before.retain(|_, t| *t > now);
        let mut refilled = false;
        while d.jobs.len() < max_jobs {
            let Some(row) = d.queue.pop_front() else {
                if refilled {
                    break;
                }
                let limit = max_jobs * 4 + d.inflight.len() + d.not_before.len() + d.given_up.len();
                d.queue.extend(self.journal.open_work(limit)?);
                refilled = true;
                continue;
            };
            if d.inflight.contains(&row.id)
                || d.not_before.contains_key(&row.id)
                || d.given_up.contains(&row.id)
            {
                continue;
            }
            if row.is_manifest
                && row.state != journal::State::Uploaded
                && let Some(clip) = &row.clip
                && self.journal.clip_members_open(clip)? > 0
            {
                continue; // the manifest goes last
            }
            d.inflight.insert(row.id);
            let (w, c) = (self.worker.clone(), self.cancel.clone());
            d.jobs.spawn(async move {
                let id = row.id;
                (id, w.run(row, c).await)
            });
        }
        Ok(())
    }

    /// `--once`: done when nothing is in flight and every queued file was given up on (and
    /// no file is still settling, or waiting for them is over), or the destination refused us.
    fn once_done(&mut self) -> Result<bool> {
        if !self.opts.once || !self.dispatch.jobs.is_empty() {
            return Ok(false);
        }
        let given_up = &self.dispatch.given_up;
        let open: Vec<FileRow> = self.journal.open_work(given_up.len() + 1)?;
        let queue_empty = open.iter().all(|r| given_up.contains(&r.id));
        let waiting = !self.scanner.unsettled.is_empty() && Instant::now() < self.timers.once_deadline;
        if self.report.destination_error.is_some() || (queue_empty && !waiting) {
            self.report.unsettled = self.scanner.unsettled.len();
            return Ok(true);
        }
        Ok(false)
    }

    /// Parts in flight finish and are checkpointed, bounded by the shutdown deadline.
    async fn shutdown(mut self) -> Report {
        let jobs = &mut self.dispatch.jobs;
        if !jobs.is_empty() {
            info!(in_flight = jobs.len(), "waiting for uploads in flight");
            let deadline = Duration::from_secs_f64(self.cfg.upload.shutdown_timeout_secs);
            if tokio::time::timeout(deadline, async { while jobs.join_next().await.is_some() {} })
                .await
                .is_err()
            {
                warn!("shutdown deadline reached; abandoning uploads in flight (they resume at next start)");
                jobs.abort_all();
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        self.cancel.cancel();
        while self.aux.join_next().await.is_some() {}
        drop(self.watch.watcher);
        let metrics = &self.metrics;
        self.report.uploaded = metrics.files_uploaded();
        info!(
            uploaded = self.report.uploaded,
            checks_create_only = metrics.existence_checks("create_only"),
            checks_by_head = metrics.existence_checks("head"),
            checks_by_listing = metrics.existence_checks("listing"),
            list_requests = metrics.list_requests(),
            "edgemask-syncd stopped"
        );
        self.report
    }
}

/// Whether a watcher event can change what is ready. Opening, reading and closing a file
/// without writing cannot — and the daemon itself opens every file it uploads and lists
/// every directory it scans: reacting to those (a directory listing produces `IN_OPEN` on
/// the directory, reported by its own watch and its parent's) fed scans back into more
/// scans, flooded the event queue and stalled dispatching for seconds at a time.
pub fn event_matters(kind: &notify::EventKind) -> bool {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => true,
        K::Access(_) => false,
        K::Any | K::Create(_) | K::Modify(_) | K::Remove(_) | K::Other => true,
    }
}

/// Whether an event says a path newly appeared here (created, or renamed into place).
fn new_entry(kind: &notify::EventKind) -> bool {
    use notify::EventKind as K;
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        kind,
        K::Create(_)
            | K::Modify(ModifyKind::Name(
                RenameMode::To | RenameMode::Both | RenameMode::Any
            ))
    )
}

/// Record the files found ready, in one transaction; true when any is new work.
fn insert_ready(journal: &Journal, fresh: &mut Vec<NewFile>) -> Result<bool> {
    let rows = journal.upsert_ready_many(fresh)?;
    fresh.clear();
    for row in &rows {
        debug!(path = %row.path.display(), key = %row.key, "ready");
    }
    Ok(!rows.is_empty())
}

async fn check_destination(
    dest: &Dest,
    cfg: &Config,
    journal: &Journal,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<()> {
    match dest.probe(cfg, cancel).await {
        Ok(()) => {
            metrics.set_dest_up(true);
            let _ = journal.set_meta("destination_error", "");
            if let Dest::S3(s) = dest {
                let n = s.abort_orphans(journal, cancel).await?;
                if n > 0 {
                    info!(aborted = n, "aborted multipart uploads left behind");
                }
            }
            Ok(())
        }
        Err(e) => {
            metrics.set_dest_up(false);
            metrics.failure(e.kind());
            error!(destination = %dest.describe(), error = %e, "destination check failed; every file is kept");
            let _ = journal.set_meta("destination_error", &e.to_string());
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_that_can_change_readiness_matter() {
        use notify::EventKind as K;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
        // Our own reads and directory listings must not wake the scanner.
        assert!(!event_matters(&K::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!event_matters(&K::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!event_matters(&K::Access(AccessKind::Read)));
        // Writes finishing, renames, creations and deletions do.
        assert!(event_matters(&K::Access(AccessKind::Close(AccessMode::Write))));
        assert!(event_matters(&K::Create(CreateKind::File)));
        assert!(event_matters(&K::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(event_matters(&K::Modify(ModifyKind::Any)));
        assert!(event_matters(&K::Remove(RemoveKind::File)));
        // Only a creation or a move-in makes a directory worth walking.
        assert!(new_entry(&K::Create(CreateKind::Folder)));
        assert!(new_entry(&K::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(!new_entry(&K::Modify(ModifyKind::Name(RenameMode::From))));
        assert!(!new_entry(&K::Modify(ModifyKind::Any)));
        assert!(!new_entry(&K::Remove(RemoveKind::Folder)));
    }
}
