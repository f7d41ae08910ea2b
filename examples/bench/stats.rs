//! Statistics for the benchmark: percentiles of the samples of one run, and
//! the median and spread of a figure across runs. Pure functions, tested.

/// Nearest-rank percentile (`p` in 0..=100) of samples in any order.
#[cfg(test)]
/// `None` for no samples, so an empty run can never print as zero.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..=100.0).contains(&p) || samples.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(percentile_sorted(&v, p))
}

/// Nearest-rank percentile of sorted, non-empty samples.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// The middle value (mean of the two middle ones for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// p50 and p99 of one run's latency samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub n: usize,
}

impl Latency {
    pub fn of(samples: &[f64]) -> Option<Latency> {
        if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Latency {
            p50: percentile_sorted(&v, 50.0),
            p99: percentile_sorted(&v, 99.0),
            n: v.len(),
        })
    }
}

/// One figure across runs: median, min and max.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Option<Spread> {
        let median = median(xs)?;
        Some(Spread {
            median,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            runs: xs.len(),
        })
    }

    /// (max - min) / median, as a percentage; None when the median is 0.
    pub fn relative_pct(&self) -> Option<f64> {
        (self.median != 0.0).then(|| (self.max - self.min) / self.median.abs() * 100.0)
    }
}

/// `figure / baseline`, None when the baseline is zero or not finite.
pub fn ratio(figure: f64, baseline: f64) -> Option<f64> {
    let r = figure / baseline;
    (baseline != 0.0 && r.is_finite()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), Some(50.0));
        assert_eq!(percentile(&xs, 99.0), Some(99.0));
        assert_eq!(percentile(&xs, 100.0), Some(100.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        // Order of the input does not matter.
        let mut rev = xs.clone();
        rev.reverse();
        assert_eq!(percentile(&rev, 99.0), Some(99.0));
        // Few samples: p99 is the largest.
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
    }

    #[test]
    fn no_samples_or_nan_give_no_figure() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0, f64::NAN], 50.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
        assert_eq!(median(&[]), None);
        assert_eq!(Latency::of(&[]), None);
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn latency_p50_p99() {
        let mut xs: Vec<f64> = vec![1.0; 990];
        xs.extend(std::iter::repeat_n(100.0, 10));
        let l = Latency::of(&xs).unwrap();
        assert_eq!(l.p50, 1.0);
        assert_eq!(l.p99, 1.0);
        xs.push(100.0);
        let l = Latency::of(&xs).unwrap();
        assert_eq!(l.p99, 100.0);
        assert_eq!(l.n, 1001);
    }

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of(&[10.0, 12.0, 11.0, 30.0, 9.0]).unwrap();
        assert_eq!(s.median, 11.0);
        assert_eq!(s.min, 9.0);
        assert_eq!(s.max, 30.0);
        assert_eq!(s.runs, 5);
        assert!((s.relative_pct().unwrap() - 190.909).abs() < 0.01);
        assert_eq!(
            Spread::of(&[0.0, 0.0]).unwrap().relative_pct(),
            None,
            "no percentage of a zero median"
        );
    }

    #[test]
    fn ratio_refuses_a_zero_baseline() {
        assert_eq!(ratio(10.0, 4.0), Some(2.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
    }
}
