//! Per-bus poll scheduler: what to put on the wire next.
//!
//! A bus carries one transaction at a time, so the scheduler's whole job is to
//! order them. Jobs sit in one of four priority lanes (control > operator >
//! event > cyclic); within a lane the earliest deadline wins, and a job's
//! deadline is its release time, so the oldest due work goes first and no job
//! in a lane can be overtaken forever by younger, shorter-period jobs.
//!
//! Complexity: a release-time min-heap holds waiting jobs and one min-heap per
//! lane holds released ones, keyed by deadline. `next_job` moves each job from
//! the release heap to its lane heap once per release and pops a lane top, and
//! `complete` pushes one entry: O(log n) each, amortised, with no scan over
//! jobs. Removal and postponement do not search the heaps: they bump the job's
//! generation, stale entries are skipped when they surface, and the heaps are
//! rebuilt once stale entries outnumber live ones, which keeps memory O(n).
//!
//! Periodic releases are absolute slots `t0 + k·period`, computed from an
//! anchor and a slot index rather than by adding the period to the last run:
//! the latter drifts by every bit of lateness and rounding, and a 15-minute
//! energy poll would wander off the quarter hour. A job taken late is
//! re-released at the first slot not before the time it completed; missed
//! slots are counted, never run in a burst that would swamp the bus.
//!
//! Overload is handled by stretching rather than starvation: demand is
//! estimated as Σ duration / period over the periodic jobs, and when it
//! exceeds `max_utilisation` every cyclic-lane period is multiplied by one
//! common factor so the load fits; every job still runs, only less often.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;

pub const LANE_CONTROL: u8 = 0;
pub const LANE_OPERATOR: u8 = 1;
pub const LANE_EVENT: u8 = 2;
pub const LANE_CYCLIC: u8 = 3;
pub const LANES: usize = 4;

/// Weight of the newest duration in the demand estimate: enough memory to
/// ride out one slow reply, quick enough to follow a baud-rate change.
const EWMA_ALPHA: f64 = 0.2;
/// Un-stretch only when the needed factor falls this far below the current
/// one, so a jittery duration estimate does not re-anchor every job each run.
const UNSTRETCH_HYSTERESIS: f64 = 0.05;
/// Cap on the stretch factor: when higher lanes alone fill the bus, cyclic
/// jobs still get a period, however long, instead of an infinite one.
pub const MAX_STRETCH: f64 = 1000.0;

pub type JobId = i64;

/// Bad argument; the message names the field and the allowed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerError(pub String);

impl fmt::Display for SchedulerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SchedulerError {}

fn err<T>(msg: String) -> Result<T, SchedulerError> {
    Err(SchedulerError(msg))
}

fn check_time(field: &str, t: f64) -> Result<(), SchedulerError> {
    if t.is_finite() {
        Ok(())
    } else {
        err(format!(
            "{field} must be a finite number of seconds, got {t}"
        ))
    }
}

fn check_duration(field: &str, d: f64) -> Result<(), SchedulerError> {
    if d.is_finite() && d >= 0.0 {
        Ok(())
    } else {
        err(format!(
            "{field} must be a finite number of seconds >= 0, got {d}"
        ))
    }
}

fn check_period(p: f64) -> Result<(), SchedulerError> {
    if p.is_finite() && p > 0.0 {
        Ok(())
    } else {
        err(format!(
            "period_s must be a finite number of seconds > 0, got {p}"
        ))
    }
}

pub fn check_lane(lane: i64) -> Result<u8, SchedulerError> {
    if (0..LANES as i64).contains(&lane) {
        Ok(lane as u8)
    } else {
        err(format!(
            "lane must be 0..3 (LANE_CONTROL=0, LANE_OPERATOR=1, LANE_EVENT=2, LANE_CYCLIC=3), got {lane}"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the release heap.
    Waiting,
    /// In its lane heap.
    Ready,
    /// Taken by `next_job`, awaiting `complete`.
    Running,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    runs: u64,
    failures: u64,
    skipped: u64,
    lateness_sum: f64,
    lateness_max: f64,
    duration_sum: f64,
}

impl Tally {
    fn record(&mut self, lateness: f64, duration: f64, ok: bool) {
        self.runs += 1;
        if !ok {
            self.failures += 1;
        }
        self.lateness_sum += lateness;
        self.lateness_max = self.lateness_max.max(lateness);
        self.duration_sum += duration;
    }

    fn mean(&self, sum: f64) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            sum / self.runs as f64
        }
    }
}

#[derive(Debug, Clone)]
struct Job {
    id: JobId,
    lane: u8,
    /// Configured period; `None` for one-shot jobs.
    period: Option<f64>,
    /// Slot grid: release = anchor + k · grid_period.
    anchor: f64,
    k: u64,
    grid_period: f64,
    release: f64,
    state: State,
    /// Release requested by `postpone` while the job was running.
    postponed: Option<f64>,
    lateness_at_take: f64,
    /// Duration estimate for demand: the expected value until a real one is
    /// reported, then an EWMA.
    est_duration: f64,
    reported: bool,
    tally: Tally,
}

impl Job {
    fn cyclic(&self) -> bool {
        self.lane == LANE_CYCLIC && self.period.is_some()
    }

    fn effective_period(&self, stretch: f64) -> f64 {
        match self.period {
            Some(p) if self.lane == LANE_CYCLIC => p * stretch,
            Some(p) => p,
            None => 0.0,
        }
    }

    fn demand(&self) -> f64 {
        self.period.map_or(0.0, |p| self.est_duration / p)
    }

    fn reanchor(&mut self, release: f64, grid_period: f64) {
        self.anchor = release;
        self.k = 0;
        self.grid_period = grid_period;
        self.release = release;
    }
}

/// Heap entry; ordered so that `BinaryHeap` pops the smallest key, then the
/// oldest push (FIFO among equal deadlines).
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: f64,
    seq: u64,
    slot: u32,
    gen: u32,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .key
            .total_cmp(&self.key)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    gen: u32,
    job: Option<Job>,
}

/// Per-job statistics snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobStats {
    pub runs: u64,
    pub failures: u64,
    pub skipped: u64,
    pub lateness_max_s: f64,
    pub lateness_mean_s: f64,
    pub duration_mean_s: f64,
    /// Configured period (0 for a one-shot job).
    pub period_s: f64,
    pub effective_period_s: f64,
    pub lane: u8,
}

/// Per-bus statistics snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BusStats {
    pub runs: u64,
    pub failures: u64,
    pub skipped: u64,
    pub busy_s: f64,
    pub lateness_max_s: f64,
    pub lateness_mean_s: f64,
    pub stretch: f64,
    pub demand: f64,
}

#[derive(Debug, Clone)]
pub struct PollScheduler {
    max_utilisation: f64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: HashMap<JobId, u32>,
    release_heap: BinaryHeap<Entry>,
    ready: [BinaryHeap<Entry>; LANES],
    stale: usize,
    seq: u64,
    /// Σ demand of periodic jobs outside the cyclic lane, and inside it.
    demand_fixed: f64,
    demand_cyclic: f64,
    /// Incremental sums drift; they are recomputed exactly now and then.
    updates_since_resum: u32,
    stretch: f64,
    /// Latest time the caller has shown us; the floor for pulled-in releases.
    last_now: f64,
    tally: Tally,
}

impl PollScheduler {
    pub fn new(max_utilisation: f64) -> Result<Self, SchedulerError> {
        if !(max_utilisation > 0.0 && max_utilisation <= 1.0) {
            return err(format!(
                "max_utilisation must be in (0, 1], got {max_utilisation}"
            ));
        }
        Ok(PollScheduler {
            max_utilisation,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            release_heap: BinaryHeap::new(),
            ready: Default::default(),
            stale: 0,
            seq: 0,
            demand_fixed: 0.0,
            demand_cyclic: 0.0,
            updates_since_resum: 0,
            stretch: 1.0,
            last_now: f64::NEG_INFINITY,
            tally: Tally::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, id: JobId) -> bool {
        self.index.contains_key(&id)
    }

    pub fn max_utilisation(&self) -> f64 {
        self.max_utilisation
    }

    /// Add a periodic job released at `first_release + k · period`.
    pub fn add_job(
        &mut self,
        id: JobId,
        period_s: f64,
        lane: u8,
        first_release: f64,
        expected_duration_s: f64,
    ) -> Result<(), SchedulerError> {
        check_period(period_s)?;
        check_lane(lane as i64)?;
        check_time("first_release", first_release)?;
        check_duration("expected_duration_s", expected_duration_s)?;
        self.check_new_id(id)?;
        let mut job = Job::new(id, lane, Some(period_s), first_release);
        job.est_duration = expected_duration_s;
        job.grid_period = job.effective_period(self.stretch);
        self.add_demand(&job, 1.0);
        self.insert(job);
        self.update_stretch();
        Ok(())
    }

    /// A one-shot job (command, operator read, event read); runs once, and its
    /// id is free again once it completes.
    pub fn submit(&mut self, id: JobId, lane: u8, release: f64) -> Result<(), SchedulerError> {
        check_lane(lane as i64)?;
        check_time("release", release)?;
        self.check_new_id(id)?;
        self.insert(Job::new(id, lane, None, release));
        Ok(())
    }

    /// Forget a job, whatever its state; a later `complete` for it is an error.
    pub fn remove_job(&mut self, id: JobId) -> Result<(), SchedulerError> {
        let slot = self.slot_of(id)?;
        let job = self.take_slot(slot);
        self.add_demand(&job, -1.0);
        if self.index.is_empty() {
            self.demand_fixed = 0.0;
            self.demand_cyclic = 0.0;
        }
        self.update_stretch();
        Ok(())
    }

    /// Take the next released job as `(id, lateness_s)`, or `None`.
    pub fn next_job(&mut self, now: f64) -> Result<Option<(JobId, f64)>, SchedulerError> {
        check_time("now", now)?;
        self.observe(now);
        while let Some(&e) = self.release_heap.peek() {
            if e.key > now {
                break;
            }
            self.release_heap.pop();
            if let Some(job) = self.live_mut(e, State::Waiting) {
                job.state = State::Ready;
                let lane = job.lane as usize;
                self.ready[lane].push(e);
            } else {
                self.stale = self.stale.saturating_sub(1);
            }
        }
        for lane in 0..LANES {
            while let Some(e) = self.ready[lane].pop() {
                if let Some(job) = self.live_mut(e, State::Ready) {
                    job.state = State::Running;
                    let lateness = (now - job.release).max(0.0);
                    job.lateness_at_take = lateness;
                    return Ok(Some((job.id, lateness)));
                }
                self.stale = self.stale.saturating_sub(1);
            }
        }
        Ok(None)
    }

    /// Earliest time at which a job is or becomes due (in the past when work
    /// is already waiting); `None` when nothing is queued.
    pub fn next_release(&mut self) -> Option<f64> {
        let mut best: Option<f64> = None;
        for lane in 0..LANES {
            let (top, popped) = Self::clean_top(&self.slots, &mut self.ready[lane], State::Ready);
            self.stale = self.stale.saturating_sub(popped);
            if let Some(t) = top {
                best = Some(best.map_or(t, |b: f64| b.min(t)));
            }
        }
        let (top, popped) = Self::clean_top(&self.slots, &mut self.release_heap, State::Waiting);
        self.stale = self.stale.saturating_sub(popped);
        if let Some(t) = top {
            best = Some(best.map_or(t, |b: f64| b.min(t)));
        }
        best
    }

    /// Report a taken job's outcome. Periodic jobs are re-released at their
    /// next slot not before `now`; one-shot jobs are dropped.
    pub fn complete(
        &mut self,
        id: JobId,
        now: f64,
        duration_s: f64,
        ok: bool,
    ) -> Result<(), SchedulerError> {
        check_time("now", now)?;
        check_duration("duration_s", duration_s)?;
        let slot = self.slot_of(id)?;
        self.observe(now);
        let job = self.slots[slot as usize]
            .job
            .as_mut()
            .expect("indexed slot");
        if job.state != State::Running {
            return err(format!(
                "job_id {id} is not running: complete() needs a job taken by next_job()"
            ));
        }
        let lateness = job.lateness_at_take;
        job.tally.record(lateness, duration_s, ok);
        self.tally.record(lateness, duration_s, ok);
        if job.period.is_none() {
            self.take_slot(slot);
            return Ok(());
        }

        let old_demand = job.demand();
        job.est_duration = if job.reported {
            job.est_duration + EWMA_ALPHA * (duration_s - job.est_duration)
        } else {
            duration_s
        };
        job.reported = true;
        let delta = job.demand() - old_demand;
        if job.cyclic() {
            self.demand_cyclic += delta;
        } else {
            self.demand_fixed += delta;
        }
        self.updates_since_resum += 1;
        if self.updates_since_resum >= 4096 {
            self.resum_demand();
        }
        self.update_stretch();

        let job = self.slots[slot as usize]
            .job
            .as_mut()
            .expect("indexed slot");
        let eff = job.effective_period(self.stretch);
        if let Some(release) = job.postponed.take() {
            job.reanchor(release, eff);
        } else {
            if eff != job.grid_period {
                // The stretch changed: a new grid starts at the current slot.
                let r = job.release;
                job.reanchor(r, eff);
            }
            let mut k = job.k + 1;
            let mut next = job.anchor + k as f64 * job.grid_period;
            if next < now {
                let missed = ((now - next) / job.grid_period).ceil() as u64;
                k += missed;
                next = job.anchor + k as f64 * job.grid_period;
                // Rounding in the division can leave us one slot short.
                let mut extra = 0;
                while next < now {
                    k += 1;
                    extra += 1;
                    next = job.anchor + k as f64 * job.grid_period;
                }
                job.tally.skipped += missed + extra;
                self.tally.skipped += missed + extra;
            }
            job.k = k;
            job.release = next;
        }
        job.state = State::Waiting;
        self.push_release(slot);
        Ok(())
    }

    /// Move a job's next release (quarantine back-off). The slot grid of a
    /// periodic job restarts there. If the job is running, the new release
    /// applies when it completes.
    pub fn postpone(&mut self, id: JobId, release: f64) -> Result<(), SchedulerError> {
        check_time("release", release)?;
        let slot = self.slot_of(id)?;
        let stretch = self.stretch;
        let job = self.slots[slot as usize]
            .job
            .as_mut()
            .expect("indexed slot");
        match job.state {
            State::Running if job.period.is_none() => err(format!(
                "job_id {id} is a running one-shot job: submit it again instead of postponing"
            )),
            State::Running => {
                job.postponed = Some(release);
                Ok(())
            }
            State::Waiting | State::Ready => {
                let eff = job.effective_period(stretch);
                job.reanchor(release, eff);
                job.state = State::Waiting;
                self.invalidate(slot);
                self.push_release(slot);
                Ok(())
            }
        }
    }

    pub fn job_stats(&self, id: JobId) -> Result<JobStats, SchedulerError> {
        let slot = self.slot_of(id)?;
        let job = self.slots[slot as usize]
            .job
            .as_ref()
            .expect("indexed slot");
        let t = &job.tally;
        Ok(JobStats {
            runs: t.runs,
            failures: t.failures,
            skipped: t.skipped,
            lateness_max_s: t.lateness_max,
            lateness_mean_s: t.mean(t.lateness_sum),
            duration_mean_s: t.mean(t.duration_sum),
            period_s: job.period.unwrap_or(0.0),
            effective_period_s: job.effective_period(self.stretch),
            lane: job.lane,
        })
    }

    pub fn bus_stats(&self) -> BusStats {
        let t = &self.tally;
        BusStats {
            runs: t.runs,
            failures: t.failures,
            skipped: t.skipped,
            busy_s: t.duration_sum,
            lateness_max_s: t.lateness_max,
            lateness_mean_s: t.mean(t.lateness_sum),
            stretch: self.stretch,
            demand: self.demand(),
        }
    }

    /// Σ estimated duration / period over periodic jobs.
    pub fn demand(&self) -> f64 {
        (self.demand_fixed + self.demand_cyclic).max(0.0)
    }

    pub fn stretch(&self) -> f64 {
        self.stretch
    }

    // ---------------------------------------------------------------- internals

    fn observe(&mut self, now: f64) {
        self.last_now = self.last_now.max(now);
    }

    fn check_new_id(&self, id: JobId) -> Result<(), SchedulerError> {
        if self.index.contains_key(&id) {
            err(format!(
                "job_id {id} is already scheduled: ids must be unique per bus"
            ))
        } else {
            Ok(())
        }
    }

    fn slot_of(&self, id: JobId) -> Result<u32, SchedulerError> {
        match self.index.get(&id) {
            Some(&s) => Ok(s),
            None => err(format!("unknown job_id {id}: not scheduled on this bus")),
        }
    }

    fn insert(&mut self, job: Job) -> u32 {
        let id = job.id;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize].job = Some(job);
                s
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    job: Some(job),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(id, slot);
        self.push_release(slot);
        slot
    }

    fn take_slot(&mut self, slot: u32) -> Job {
        self.invalidate(slot);
        let job = self.slots[slot as usize].job.take().expect("indexed slot");
        self.index.remove(&job.id);
        self.free.push(slot);
        job
    }

    /// Make every heap entry of `slot` stale.
    fn invalidate(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.gen = s.gen.wrapping_add(1);
        if matches!(
            s.job.as_ref().map(|j| j.state),
            Some(State::Waiting | State::Ready)
        ) {
            self.stale += 1;
        }
        if self.stale > 64 && self.stale > self.index.len() {
            self.compact();
        }
    }

    fn push_release(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        let job = s.job.as_ref().expect("indexed slot");
        self.seq += 1;
        self.release_heap.push(Entry {
            key: job.release,
            seq: self.seq,
            slot,
            gen: s.gen,
        });
    }

    fn live_mut(&mut self, e: Entry, state: State) -> Option<&mut Job> {
        let s = &mut self.slots[e.slot as usize];
        if s.gen != e.gen {
            return None;
        }
        s.job.as_mut().filter(|j| j.state == state)
    }

    /// The key of the first live entry, popping stale ones (and counting them).
    fn clean_top(
        slots: &[Slot],
        heap: &mut BinaryHeap<Entry>,
        state: State,
    ) -> (Option<f64>, usize) {
        let mut popped = 0;
        while let Some(&e) = heap.peek() {
            let s = &slots[e.slot as usize];
            if s.gen == e.gen && s.job.as_ref().is_some_and(|j| j.state == state) {
                return (Some(e.key), popped);
            }
            heap.pop();
            popped += 1;
        }
        (None, popped)
    }

    fn compact(&mut self) {
        let slots = &self.slots;
        let live = |e: &Entry, state: State| {
            let s = &slots[e.slot as usize];
            s.gen == e.gen && s.job.as_ref().is_some_and(|j| j.state == state)
        };
        self.release_heap.retain(|e| live(e, State::Waiting));
        for heap in &mut self.ready {
            heap.retain(|e| live(e, State::Ready));
        }
        self.stale = 0;
    }

    fn add_demand(&mut self, job: &Job, sign: f64) {
        if job.cyclic() {
            self.demand_cyclic += sign * job.demand();
        } else {
            self.demand_fixed += sign * job.demand();
        }
    }

    fn resum_demand(&mut self) {
        let (mut fixed, mut cyclic) = (0.0, 0.0);
        for job in self.slots.iter().filter_map(|s| s.job.as_ref()) {
            if job.cyclic() {
                cyclic += job.demand();
            } else {
                fixed += job.demand();
            }
        }
        self.demand_fixed = fixed;
        self.demand_cyclic = cyclic;
        self.updates_since_resum = 0;
    }

    /// The common factor for cyclic periods that brings demand under
    /// `max_utilisation`, given that the other lanes cannot be stretched.
    fn required_stretch(&self) -> f64 {
        let (fixed, cyclic) = (self.demand_fixed.max(0.0), self.demand_cyclic.max(0.0));
        if fixed + cyclic <= self.max_utilisation || cyclic <= 0.0 {
            return 1.0;
        }
        // When the other lanes leave (almost) no room, give cyclic jobs a
        // small share anyway so they run, just rarely.
        let room = (self.max_utilisation - fixed).max(self.max_utilisation * 0.05);
        (cyclic / room).clamp(1.0, MAX_STRETCH)
    }

    fn update_stretch(&mut self) {
        let need = self.required_stretch();
        let h = UNSTRETCH_HYSTERESIS;
        if need > self.stretch {
            self.stretch = need;
        } else if need < self.stretch
            && (need < self.stretch * (1.0 - h)
                || self.demand() <= self.max_utilisation * (1.0 - h))
        {
            self.stretch = need;
            self.pull_in_cyclic();
        }
    }

    /// After un-stretching, waiting cyclic jobs would otherwise sit out the
    /// long stretched period they were last given.
    fn pull_in_cyclic(&mut self) {
        let stretch = self.stretch;
        let floor = self.last_now;
        let mut moved = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(job) = s.job.as_mut() else { continue };
            if !job.cyclic() || job.state != State::Waiting {
                continue;
            }
            let eff = job.effective_period(stretch);
            // The slot before the pending one is when it last ran (or the
            // anchor, if it has not run on this grid yet).
            let previous = job.release - job.grid_period;
            let sooner = (previous + eff).max(floor);
            if job.k > 0 && sooner < job.release {
                job.reanchor(sooner, eff);
                moved.push(i as u32);
            }
        }
        for slot in moved {
            self.invalidate(slot);
            self.push_release(slot);
        }
    }
}

impl Job {
    fn new(id: JobId, lane: u8, period: Option<f64>, release: f64) -> Job {
        Job {
            id,
            lane,
            period,
            anchor: release,
            k: 0,
            grid_period: period.unwrap_or(0.0),
            release,
            state: State::Waiting,
            postponed: None,
            lateness_at_take: 0.0,
            est_duration: 0.0,
            reported: false,
            tally: Tally::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the bus in virtual time until `until`: take a job, spend its
    /// duration on the wire, complete it; sleep to the next release when idle.
    fn simulate(
        s: &mut PollScheduler,
        mut now: f64,
        until: f64,
        duration: impl Fn(JobId) -> f64,
        mut seen: impl FnMut(JobId, f64, f64),
    ) -> f64 {
        while now < until {
            match s.next_job(now).unwrap() {
                Some((id, late)) => {
                    seen(id, now, late);
                    now += duration(id);
                    s.complete(id, now, duration(id), true).unwrap();
                }
                None => match s.next_release() {
                    Some(t) if t > now => now = t.min(until),
                    Some(_) => unreachable!("a due job must be returned"),
                    None => break,
                },
            }
        }
        now
    }

    #[test]
    fn light_bus_runs_every_slot_on_time() {
        let mut s = PollScheduler::new(0.95).unwrap();
        for id in 0..10 {
            s.add_job(id, 1.0 + id as f64 * 0.5, LANE_CYCLIC, 0.0, 0.01)
                .unwrap();
        }
        let mut runs: HashMap<JobId, Vec<f64>> = HashMap::new();
        simulate(
            &mut s,
            0.0,
            100.0,
            |_| 0.01,
            |id, t, late| {
                assert!(late <= 0.1 + 1e-9, "job {id} late by {late}");
                runs.entry(id).or_default().push(t);
            },
        );
        for id in 0..10 {
            let period = 1.0 + id as f64 * 0.5;
            let st = s.job_stats(id).unwrap();
            assert_eq!(st.runs as usize, runs[&id].len());
            assert_eq!(st.runs, (100.0 / period).ceil() as u64);
            assert_eq!(st.skipped, 0);
            // slots are absolute: each run starts within one transaction
            // burst of t0 + k·period
            for (k, t) in runs[&id].iter().enumerate() {
                assert!(
                    (t - k as f64 * period).abs() < 0.11,
                    "job {id} run {k} at {t}"
                );
            }
        }
        assert_eq!(s.stretch(), 1.0);
    }

    #[test]
    fn no_drift_over_many_periods() {
        let mut s = PollScheduler::new(0.95).unwrap();
        s.add_job(1, 0.1, LANE_CYCLIC, 5.0, 0.0).unwrap();
        let mut last = 0.0;
        simulate(&mut s, 0.0, 1000.0, |_| 0.003, |_, t, _| last = t);
        // 1e4 periods of 0.1 s, each run 3 ms late relative to nothing: the
        // release grid itself must stay at 5.0 + k·0.1.
        let k = ((last - 5.0) / 0.1).round();
        assert!((last - (5.0 + k * 0.1)).abs() < 1e-6);
    }

    #[test]
    fn late_job_skips_missed_slots_without_burst() {
        let mut s = PollScheduler::new(0.95).unwrap();
        s.add_job(7, 1.0, LANE_CYCLIC, 0.0, 0.0).unwrap();
        assert_eq!(s.next_job(0.0).unwrap(), Some((7, 0.0)));
        // the owner only gets to complete it at 3.5 s: slots 1, 2, 3 are gone
        s.complete(7, 3.5, 0.1, false).unwrap();
        assert_eq!(s.next_release(), Some(4.0));
        assert_eq!(s.next_job(3.9).unwrap(), None);
        assert_eq!(s.next_job(4.0).unwrap(), Some((7, 0.0)));
        let st = s.job_stats(7).unwrap();
        assert_eq!((st.runs, st.failures, st.skipped), (1, 1, 3));
        assert_eq!(s.bus_stats().skipped, 3);
    }

    #[test]
    fn lanes_then_deadlines() {
        let mut s = PollScheduler::new(0.95).unwrap();
        for id in 0..50 {
            s.add_job(id, 10.0, LANE_CYCLIC, id as f64 * 0.01, 0.1)
                .unwrap();
        }
        s.submit(1000, LANE_EVENT, 0.5).unwrap();
        s.submit(1001, LANE_CONTROL, 0.9).unwrap();
        // everything is overdue at t = 1
        assert_eq!(s.next_job(1.0).unwrap().unwrap().0, 1001);
        assert_eq!(s.next_job(1.0).unwrap().unwrap().0, 1000);
        let (id, late) = s.next_job(1.0).unwrap().unwrap();
        assert_eq!((id, late), (0, 1.0));
        assert_eq!(s.next_job(1.0).unwrap().unwrap().0, 1);
        s.complete(1001, 1.0, 0.2, true).unwrap();
        // one-shot ids are free again once complete
        assert!(!s.contains(1001));
        assert!(s.job_stats(1001).is_err());
        s.submit(1001, LANE_CONTROL, 1.0).unwrap();
        assert_eq!(s.next_job(1.0).unwrap().unwrap().0, 1001);
    }

    #[test]
    fn overload_stretches_cyclic_and_unstretches() {
        let mut s = PollScheduler::new(0.9).unwrap();
        // 20 jobs of 0.2 s every 2 s = demand 2.0
        for id in 0..20 {
            s.add_job(id, 2.0, LANE_CYCLIC, 0.0, 0.2).unwrap();
        }
        // a control-lane periodic job is never stretched
        s.add_job(100, 1.0, LANE_CONTROL, 0.0, 0.05).unwrap();
        let want = 2.0 / (0.9 - 0.05);
        assert!((s.stretch() - want).abs() < 1e-9);
        let now = simulate(
            &mut s,
            0.0,
            600.0,
            |id| if id == 100 { 0.05 } else { 0.2 },
            |_, _, _| {},
        );
        let bus = s.bus_stats();
        assert!(bus.stretch > 2.0 && bus.stretch < 2.5, "{bus:?}");
        for id in 0..20 {
            let st = s.job_stats(id).unwrap();
            let expected_runs = 600.0 / (2.0 * bus.stretch);
            assert!(
                (st.runs as f64 - expected_runs).abs() <= 2.0,
                "{id}: {st:?}"
            );
            assert!((st.effective_period_s - 2.0 * bus.stretch).abs() < 1e-9);
        }
        let ctl = s.job_stats(100).unwrap();
        assert_eq!(ctl.effective_period_s, 1.0);
        assert!(ctl.runs >= 599);
        // utilisation held under the limit
        assert!(bus.busy_s / now <= 0.91, "{}", bus.busy_s / now);

        // drop 15 of the cyclic jobs: demand 0.55, no stretch needed
        for id in 5..20 {
            s.remove_job(id).unwrap();
        }
        assert_eq!(s.stretch(), 1.0);
        let before: Vec<u64> = (0..5).map(|id| s.job_stats(id).unwrap().runs).collect();
        simulate(
            &mut s,
            now,
            now + 100.0,
            |id| if id == 100 { 0.05 } else { 0.2 },
            |_, _, _| {},
        );
        for id in 0..5 {
            let st = s.job_stats(id).unwrap();
            assert_eq!(st.effective_period_s, 2.0);
            assert!(st.runs - before[id as usize] >= 49, "{st:?}");
        }
    }

    #[test]
    fn stretch_follows_reported_durations() {
        let mut s = PollScheduler::new(0.95).unwrap();
        for id in 0..10 {
            // expected durations understate the real ones by 4x
            s.add_job(id, 1.0, LANE_CYCLIC, 0.0, 0.05).unwrap();
        }
        assert_eq!(s.stretch(), 1.0);
        simulate(&mut s, 0.0, 60.0, |_| 0.2, |_, _, _| {});
        let bus = s.bus_stats();
        assert!((bus.demand - 2.0).abs() < 1e-6, "{bus:?}");
        assert!(bus.stretch >= 2.0 / 0.95 - 1e-9 && bus.stretch < 2.0 / 0.95 * 1.06);
        for id in 0..10 {
            assert!(s.job_stats(id).unwrap().runs >= 20);
        }
    }

    #[test]
    fn postpone_and_remove() {
        let mut s = PollScheduler::new(0.95).unwrap();
        s.add_job(1, 1.0, LANE_CYCLIC, 0.0, 0.0).unwrap();
        s.add_job(2, 1.0, LANE_CYCLIC, 0.0, 0.0).unwrap();
        s.postpone(1, 30.0).unwrap();
        assert_eq!(s.next_job(0.0).unwrap(), Some((2, 0.0)));
        assert_eq!(s.next_job(0.0).unwrap(), None);
        // postponed while running: applies at completion
        s.postpone(2, 10.0).unwrap();
        s.complete(2, 0.1, 0.1, false).unwrap();
        assert_eq!(s.next_release(), Some(10.0));
        assert_eq!(s.next_job(10.0).unwrap(), Some((2, 0.0)));
        s.complete(2, 10.1, 0.1, true).unwrap();
        assert_eq!(s.next_release(), Some(11.0));
        s.remove_job(2).unwrap();
        assert_eq!(s.next_release(), Some(30.0));
        assert_eq!(s.len(), 1);
        assert!(s.remove_job(2).is_err());
        assert!(s.complete(2, 1.0, 0.0, true).is_err());
        // removed while running: complete is an error, nothing else changes
        let (id, _) = s.next_job(30.0).unwrap().unwrap();
        s.remove_job(id).unwrap();
        assert!(s.complete(id, 30.1, 0.1, true).is_err());
        assert!(s.is_empty());
        assert_eq!(s.next_release(), None);
    }

    #[test]
    fn bad_arguments() {
        assert!(PollScheduler::new(0.0)
            .unwrap_err()
            .0
            .contains("max_utilisation"));
        assert!(PollScheduler::new(f64::NAN).is_err());
        assert!(PollScheduler::new(1.5).is_err());
        let mut s = PollScheduler::new(0.95).unwrap();
        s.add_job(1, 1.0, LANE_CYCLIC, 0.0, 0.0).unwrap();
        let e = s.add_job(1, 1.0, LANE_CYCLIC, 0.0, 0.0).unwrap_err();
        assert!(e.0.contains("job_id 1") && e.0.contains("already"));
        assert!(s
            .add_job(2, 0.0, 3, 0.0, 0.0)
            .unwrap_err()
            .0
            .contains("period_s"));
        assert!(s.add_job(2, f64::NAN, 3, 0.0, 0.0).is_err());
        assert!(s
            .add_job(2, 1.0, 4, 0.0, 0.0)
            .unwrap_err()
            .0
            .contains("lane must be 0..3"));
        assert!(s
            .add_job(2, 1.0, 3, f64::INFINITY, 0.0)
            .unwrap_err()
            .0
            .contains("first_release"));
        assert!(s
            .add_job(2, 1.0, 3, 0.0, -1.0)
            .unwrap_err()
            .0
            .contains("expected_duration_s"));
        assert!(s.submit(1, 0, 0.0).is_err());
        assert!(s.next_job(f64::NAN).unwrap_err().0.contains("now"));
        assert!(s
            .complete(1, 0.0, 0.0, true)
            .unwrap_err()
            .0
            .contains("not running"));
        assert!(s
            .postpone(9, 0.0)
            .unwrap_err()
            .0
            .contains("unknown job_id 9"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.demand(), 0.0);
    }

    #[test]
    fn heaps_stay_bounded_under_churn() {
        let mut s = PollScheduler::new(0.95).unwrap();
        for id in 0..100 {
            s.add_job(id, 1.0, LANE_CYCLIC, 0.0, 0.0).unwrap();
        }
        for round in 0..1000 {
            for id in 0..100 {
                s.postpone(id, round as f64).unwrap();
            }
        }
        let queued = s.release_heap.len() + s.ready.iter().map(|h| h.len()).sum::<usize>();
        assert!(queued <= 300, "{queued}");
        assert_eq!(s.next_release(), Some(999.0));
    }
}
