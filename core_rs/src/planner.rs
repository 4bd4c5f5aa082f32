//! Capacity planner: will a poll plan fit on a bus, before it is deployed?
//!
//! Serial buses are slow enough that wire time dominates everything else: at
//! 2400 baud 8E1 one character takes 4.583 ms, so a one-item DL/T 645 read is
//! about 0.2 s however fast the controller is. The planner therefore models a
//! transaction as characters on the wire plus the slave's response delay plus
//! any enforced gap, and sums that over the poll plan.

use crate::scheduler::SchedulerError;

fn err<T>(msg: String) -> Result<T, SchedulerError> {
    Err(SchedulerError(msg))
}

fn check_link(baud: i64, bits_per_char: i64) -> Result<(), SchedulerError> {
    if !(50..=10_000_000).contains(&baud) {
        return err(format!("baud must be 50..10000000, got {baud}"));
    }
    if !(7..=12).contains(&bits_per_char) {
        return err(format!(
            "bits_per_char must be 7..12 (start + data + parity + stop bits), got {bits_per_char}"
        ));
    }
    Ok(())
}

fn check_bytes(field: &str, n: i64) -> Result<(), SchedulerError> {
    if (0..=65_535).contains(&n) {
        Ok(())
    } else {
        err(format!("{field} must be 0..65535 bytes, got {n}"))
    }
}

fn check_seconds(field: &str, s: f64) -> Result<(), SchedulerError> {
    if s.is_finite() && s >= 0.0 {
        Ok(())
    } else {
        err(format!(
            "{field} must be a finite number of seconds >= 0, got {s}"
        ))
    }
}

/// Seconds for one request/response on the wire:
/// (req + resp) × bits_per_char / baud + response delay + gap.
pub fn transaction_time(
    baud: i64,
    bits_per_char: i64,
    request_bytes: i64,
    response_bytes: i64,
    response_delay_s: f64,
    gap_s: f64,
) -> Result<f64, SchedulerError> {
    check_link(baud, bits_per_char)?;
    check_bytes("request_bytes", request_bytes)?;
    check_bytes("response_bytes", response_bytes)?;
    check_seconds("response_delay_s", response_delay_s)?;
    check_seconds("gap_s", gap_s)?;
    let chars = (request_bytes + response_bytes) as f64;
    Ok(chars * bits_per_char as f64 / baud as f64 + response_delay_s + gap_s)
}

/// One kind of transaction in a poll plan, repeated `count` times per period
/// (e.g. one poll group on every meter of the bus).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanJob {
    pub name: String,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub period_s: f64,
    pub response_delay_s: f64,
    pub count: i64,
    pub gap_s: f64,
}

impl PlanJob {
    pub fn new(
        name: String,
        request_bytes: i64,
        response_bytes: i64,
        period_s: f64,
        response_delay_s: f64,
        count: i64,
        gap_s: f64,
    ) -> Result<PlanJob, SchedulerError> {
        check_bytes("request_bytes", request_bytes)?;
        check_bytes("response_bytes", response_bytes)?;
        if !(period_s.is_finite() && period_s > 0.0) {
            return err(format!(
                "period_s must be a finite number of seconds > 0, got {period_s}"
            ));
        }
        check_seconds("response_delay_s", response_delay_s)?;
        if !(0..=1_000_000).contains(&count) {
            return err(format!("count must be 0..1000000, got {count}"));
        }
        check_seconds("gap_s", gap_s)?;
        Ok(PlanJob {
            name,
            request_bytes,
            response_bytes,
            period_s,
            response_delay_s,
            count,
            gap_s,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanJobResult {
    pub name: String,
    pub transaction_s: f64,
    /// count × transaction_s / period_s.
    pub utilisation: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BusPlan {
    /// Fraction of wire time needed (> 1 cannot meet the periods).
    pub utilisation: f64,
    /// Every transaction of the plan once, back to back.
    pub worst_case_cycle_s: f64,
    /// Transactions per second the wire carries at 100 % for this mix.
    pub max_transactions_per_s: f64,
    pub feasible: bool,
    pub jobs: Vec<PlanJobResult>,
}

pub fn plan_bus(
    baud: i64,
    bits_per_char: i64,
    jobs: &[PlanJob],
) -> Result<BusPlan, SchedulerError> {
    check_link(baud, bits_per_char)?;
    let mut utilisation = 0.0;
    let mut cycle = 0.0;
    let mut rate = 0.0;
    let mut results = Vec::with_capacity(jobs.len());
    for j in jobs {
        let t = transaction_time(
            baud,
            bits_per_char,
            j.request_bytes,
            j.response_bytes,
            j.response_delay_s,
            j.gap_s,
        )?;
        let n = j.count as f64;
        let u = n * t / j.period_s;
        utilisation += u;
        cycle += n * t;
        rate += n / j.period_s;
        results.push(PlanJobResult {
            name: j.name.clone(),
            transaction_s: t,
            utilisation: u,
        });
    }
    // The mix runs `rate` transactions/s using `utilisation` of the wire, so
    // at full wire it runs rate / utilisation: 1 / (rate-weighted mean time).
    let max_transactions_per_s = if utilisation > 0.0 {
        rate / utilisation
    } else {
        0.0
    };
    Ok(BusPlan {
        utilisation,
        worst_case_cycle_s: cycle,
        max_transactions_per_s,
        feasible: utilisation <= 1.0,
        jobs: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, req: i64, resp: i64, period: f64, delay: f64, count: i64) -> PlanJob {
        PlanJob::new(name.into(), req, resp, period, delay, count, 0.0).unwrap()
    }

    #[test]
    fn dlt645_one_item_read_at_2400() {
        // 16-byte read request, 20-byte energy reply, 20 ms response delay
        let t = transaction_time(2400, 11, 16, 20, 0.020, 0.0).unwrap();
        assert!((t - 0.185).abs() < 0.001, "{t}");
        // with 4 FE preamble on both frames
        let t = transaction_time(2400, 11, 20, 24, 0.020, 0.0).unwrap();
        assert!((t - 0.2217).abs() < 0.001, "{t}");
        let p = plan_bus(2400, 11, &[job("energy", 16, 20, 1.0, 0.02, 1)]).unwrap();
        assert!(p.max_transactions_per_s <= 5.41 && p.max_transactions_per_s > 5.3);
    }

    #[test]
    fn utilisation_cycle_and_feasibility() {
        let jobs = [
            job("instant", 16, 22, 5.0, 0.05, 30),
            job("energy", 16, 20, 900.0, 0.05, 30),
        ];
        let p = plan_bus(2400, 11, &jobs).unwrap();
        let ti = transaction_time(2400, 11, 16, 22, 0.05, 0.0).unwrap();
        let te = transaction_time(2400, 11, 16, 20, 0.05, 0.0).unwrap();
        assert!((p.utilisation - (30.0 * ti / 5.0 + 30.0 * te / 900.0)).abs() < 1e-12);
        assert!((p.worst_case_cycle_s - 30.0 * (ti + te)).abs() < 1e-12);
        assert!(!p.feasible);
        assert_eq!(p.jobs.len(), 2);
        assert_eq!(p.jobs[0].name, "instant");
        let empty = plan_bus(9600, 11, &[]).unwrap();
        assert_eq!(
            (empty.utilisation, empty.max_transactions_per_s),
            (0.0, 0.0)
        );
        assert!(empty.feasible);
    }

    #[test]
    fn bad_arguments() {
        assert!(transaction_time(0, 11, 1, 1, 0.0, 0.0)
            .unwrap_err()
            .0
            .contains("baud"));
        assert!(transaction_time(2400, 3, 1, 1, 0.0, 0.0)
            .unwrap_err()
            .0
            .contains("bits_per_char"));
        assert!(transaction_time(2400, 11, -1, 1, 0.0, 0.0)
            .unwrap_err()
            .0
            .contains("request_bytes"));
        assert!(transaction_time(2400, 11, 1, 1, f64::NAN, 0.0)
            .unwrap_err()
            .0
            .contains("response_delay_s"));
        let e = PlanJob::new("x".into(), 1, 1, 0.0, 0.0, 1, 0.0).unwrap_err();
        assert!(e.0.contains("period_s"));
        assert!(PlanJob::new("x".into(), 1, 1, 1.0, 0.0, -1, 0.0)
            .unwrap_err()
            .0
            .contains("count"));
    }
}
