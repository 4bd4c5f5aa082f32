//! Poll scheduler and capacity planner.

use pyo3::prelude::*;

use super::errors::SchedulerError;
use crate::planner;
use crate::scheduler::{self, JobId, PollScheduler};

fn sched_err(e: scheduler::SchedulerError) -> PyErr {
    SchedulerError::new_err(e.0)
}

/// Ints go through these wrappers so that a bad value is a SchedulerError
/// naming the field and the range, not a bare OverflowError or TypeError.
fn int_arg(field: &str, v: &Bound<'_, PyAny>, range: &str) -> PyResult<i64> {
    v.extract::<i64>()
        .map_err(|_| SchedulerError::new_err(format!("{field} must be an int in {range}, got {v}")))
}

struct JobIdArg(JobId);

impl<'a, 'py> FromPyObject<'a, 'py> for JobIdArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        int_arg("job_id", &obj, "-2**63..2**63-1").map(JobIdArg)
    }
}

struct LaneArg(u8);

impl<'a, 'py> FromPyObject<'a, 'py> for LaneArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let range = "0..3 (LANE_CONTROL=0, LANE_OPERATOR=1, LANE_EVENT=2, LANE_CYCLIC=3)";
        let lane = int_arg("lane", &obj, range)?;
        scheduler::check_lane(lane).map(LaneArg).map_err(sched_err)
    }
}

#[pyclass(name = "JobStats", module = "controller._core_rs", frozen, get_all)]
struct PyJobStats {
    runs: u64,
    failures: u64,
    skipped: u64,
    lateness_max_s: f64,
    lateness_mean_s: f64,
    duration_mean_s: f64,
    period_s: f64,
    effective_period_s: f64,
    lane: u8,
}

#[pymethods]
impl PyJobStats {
    fn __repr__(&self) -> String {
        format!(
            "JobStats(runs={}, failures={}, skipped={}, lateness_max_s={}, lateness_mean_s={}, \
             duration_mean_s={}, period_s={}, effective_period_s={}, lane={})",
            self.runs,
            self.failures,
            self.skipped,
            self.lateness_max_s,
            self.lateness_mean_s,
            self.duration_mean_s,
            self.period_s,
            self.effective_period_s,
            self.lane
        )
    }
}

#[pyclass(name = "BusStats", module = "controller._core_rs", frozen, get_all)]
struct PyBusStats {
    runs: u64,
    failures: u64,
    skipped: u64,
    busy_s: f64,
    lateness_max_s: f64,
    lateness_mean_s: f64,
    stretch: f64,
    demand: f64,
}

#[pymethods]
impl PyBusStats {
    fn __repr__(&self) -> String {
        format!(
            "BusStats(runs={}, failures={}, skipped={}, busy_s={}, lateness_max_s={}, \
             lateness_mean_s={}, stretch={}, demand={})",
            self.runs,
            self.failures,
            self.skipped,
            self.busy_s,
            self.lateness_max_s,
            self.lateness_mean_s,
            self.stretch,
            self.demand
        )
    }
}

/// Per-bus scheduler: earliest deadline first within priority lanes.
#[pyclass(name = "PollScheduler", module = "controller._core_rs")]
struct PyPollScheduler {
    inner: PollScheduler,
}

#[pymethods]
impl PyPollScheduler {
    #[new]
    #[pyo3(signature = (max_utilisation = 0.95))]
    fn new(max_utilisation: f64) -> PyResult<Self> {
        let inner = PollScheduler::new(max_utilisation).map_err(sched_err)?;
        Ok(Self { inner })
    }

    #[pyo3(
        signature = (job_id, period_s, lane = LaneArg(scheduler::LANE_CYCLIC), first_release = 0.0, expected_duration_s = 0.0),
        text_signature = "(self, job_id, period_s, lane=3, first_release=0.0, expected_duration_s=0.0)"
    )]
    fn add_job(
        &mut self,
        job_id: JobIdArg,
        period_s: f64,
        lane: LaneArg,
        first_release: f64,
        expected_duration_s: f64,
    ) -> PyResult<()> {
        self.inner
            .add_job(
                job_id.0,
                period_s,
                lane.0,
                first_release,
                expected_duration_s,
            )
            .map_err(sched_err)
    }

    fn remove_job(&mut self, job_id: JobIdArg) -> PyResult<()> {
        self.inner.remove_job(job_id.0).map_err(sched_err)
    }

    /// A one-shot job (command, operator read, event read); runs once.
    fn submit(&mut self, job_id: JobIdArg, lane: LaneArg, release: f64) -> PyResult<()> {
        self.inner
            .submit(job_id.0, lane.0, release)
            .map_err(sched_err)
    }

    fn next_job(&mut self, now: f64) -> PyResult<Option<(JobId, f64)>> {
        self.inner.next_job(now).map_err(sched_err)
    }

    fn next_release(&mut self) -> Option<f64> {
        self.inner.next_release()
    }

    fn complete(&mut self, job_id: JobIdArg, now: f64, duration_s: f64, ok: bool) -> PyResult<()> {
        self.inner
            .complete(job_id.0, now, duration_s, ok)
            .map_err(sched_err)
    }

    fn postpone(&mut self, job_id: JobIdArg, release: f64) -> PyResult<()> {
        self.inner.postpone(job_id.0, release).map_err(sched_err)
    }

    fn job_stats(&self, job_id: JobIdArg) -> PyResult<PyJobStats> {
        let s = self.inner.job_stats(job_id.0).map_err(sched_err)?;
        Ok(PyJobStats {
            runs: s.runs,
            failures: s.failures,
            skipped: s.skipped,
            lateness_max_s: s.lateness_max_s,
            lateness_mean_s: s.lateness_mean_s,
            duration_mean_s: s.duration_mean_s,
            period_s: s.period_s,
            effective_period_s: s.effective_period_s,
            lane: s.lane,
        })
    }

    fn bus_stats(&self) -> PyBusStats {
        let s = self.inner.bus_stats();
        PyBusStats {
            runs: s.runs,
            failures: s.failures,
            skipped: s.skipped,
            busy_s: s.busy_s,
            lateness_max_s: s.lateness_max_s,
            lateness_mean_s: s.lateness_mean_s,
            stretch: s.stretch,
            demand: s.demand,
        }
    }

    #[getter]
    fn max_utilisation(&self) -> f64 {
        self.inner.max_utilisation()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, job_id: &Bound<'_, PyAny>) -> bool {
        job_id
            .extract::<i64>()
            .is_ok_and(|id| self.inner.contains(id))
    }

    fn __repr__(&self) -> String {
        format!(
            "PollScheduler(jobs={}, max_utilisation={}, stretch={})",
            self.inner.len(),
            self.inner.max_utilisation(),
            self.inner.stretch()
        )
    }
}

#[pyclass(name = "PlanJob", module = "controller._core_rs", frozen)]
struct PyPlanJob {
    inner: planner::PlanJob,
}

#[pymethods]
impl PyPlanJob {
    #[new]
    #[pyo3(signature = (name, request_bytes, response_bytes, period_s, response_delay_s, count = 1, gap_s = 0.0))]
    fn new(
        name: String,
        request_bytes: i64,
        response_bytes: i64,
        period_s: f64,
        response_delay_s: f64,
        count: i64,
        gap_s: f64,
    ) -> PyResult<Self> {
        let inner = planner::PlanJob::new(
            name,
            request_bytes,
            response_bytes,
            period_s,
            response_delay_s,
            count,
            gap_s,
        )
        .map_err(sched_err)?;
        Ok(Self { inner })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    #[getter]
    fn request_bytes(&self) -> i64 {
        self.inner.request_bytes
    }
    #[getter]
    fn response_bytes(&self) -> i64 {
        self.inner.response_bytes
    }
    #[getter]
    fn period_s(&self) -> f64 {
        self.inner.period_s
    }
    #[getter]
    fn response_delay_s(&self) -> f64 {
        self.inner.response_delay_s
    }
    #[getter]
    fn count(&self) -> i64 {
        self.inner.count
    }
    #[getter]
    fn gap_s(&self) -> f64 {
        self.inner.gap_s
    }

    fn __repr__(&self) -> String {
        let j = &self.inner;
        format!(
            "PlanJob(name={:?}, request_bytes={}, response_bytes={}, period_s={}, \
             response_delay_s={}, count={}, gap_s={})",
            j.name,
            j.request_bytes,
            j.response_bytes,
            j.period_s,
            j.response_delay_s,
            j.count,
            j.gap_s
        )
    }
}

#[pyclass(
    name = "PlanJobResult",
    module = "controller._core_rs",
    frozen,
    get_all
)]
#[derive(Clone)]
struct PyPlanJobResult {
    name: String,
    transaction_s: f64,
    utilisation: f64,
}

#[pymethods]
impl PyPlanJobResult {
    fn __repr__(&self) -> String {
        format!(
            "PlanJobResult(name={:?}, transaction_s={}, utilisation={})",
            self.name, self.transaction_s, self.utilisation
        )
    }
}

#[pyclass(name = "BusPlan", module = "controller._core_rs", frozen, get_all)]
struct PyBusPlan {
    utilisation: f64,
    worst_case_cycle_s: f64,
    max_transactions_per_s: f64,
    feasible: bool,
    jobs: Vec<PyPlanJobResult>,
}

#[pymethods]
impl PyBusPlan {
    fn __repr__(&self) -> String {
        format!(
            "BusPlan(utilisation={}, worst_case_cycle_s={}, max_transactions_per_s={}, feasible={}, jobs={})",
            self.utilisation,
            self.worst_case_cycle_s,
            self.max_transactions_per_s,
            if self.feasible { "True" } else { "False" },
            self.jobs.len()
        )
    }
}

/// Predict utilisation and worst-case cycle of one bus from wire timing.
#[pyfunction]
fn plan_bus(baud: i64, bits_per_char: i64, jobs: Vec<PyRef<'_, PyPlanJob>>) -> PyResult<PyBusPlan> {
    let jobs: Vec<planner::PlanJob> = jobs.iter().map(|j| j.inner.clone()).collect();
    let p = planner::plan_bus(baud, bits_per_char, &jobs).map_err(sched_err)?;
    Ok(PyBusPlan {
        utilisation: p.utilisation,
        worst_case_cycle_s: p.worst_case_cycle_s,
        max_transactions_per_s: p.max_transactions_per_s,
        feasible: p.feasible,
        jobs: p
            .jobs
            .into_iter()
            .map(|r| PyPlanJobResult {
                name: r.name,
                transaction_s: r.transaction_s,
                utilisation: r.utilisation,
            })
            .collect(),
    })
}

/// Seconds for one request/response on the wire: (req + resp) × bits/baud + delay + gap.
#[pyfunction]
#[pyo3(signature = (baud, bits_per_char, request_bytes, response_bytes, response_delay_s, gap_s = 0.0))]
fn transaction_time(
    baud: i64,
    bits_per_char: i64,
    request_bytes: i64,
    response_bytes: i64,
    response_delay_s: f64,
    gap_s: f64,
) -> PyResult<f64> {
    planner::transaction_time(
        baud,
        bits_per_char,
        request_bytes,
        response_bytes,
        response_delay_s,
        gap_s,
    )
    .map_err(sched_err)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LANE_CONTROL", scheduler::LANE_CONTROL)?;
    m.add("LANE_OPERATOR", scheduler::LANE_OPERATOR)?;
    m.add("LANE_EVENT", scheduler::LANE_EVENT)?;
    m.add("LANE_CYCLIC", scheduler::LANE_CYCLIC)?;
    m.add_class::<PyJobStats>()?;
    m.add_class::<PyBusStats>()?;
    m.add_class::<PyPollScheduler>()?;
    m.add_class::<PyPlanJob>()?;
    m.add_class::<PyPlanJobResult>()?;
    m.add_class::<PyBusPlan>()?;
    m.add_function(wrap_pyfunction!(plan_bus, m)?)?;
    m.add_function(wrap_pyfunction!(transaction_time, m)?)?;
    Ok(())
}
