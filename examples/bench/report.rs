//! The results table: each figure as median and spread over runs, beside
//! its baseline from the same runs, the ratio, the target and whether the
//! median meets it. Rendered as Markdown for BENCHMARKS.md.
use super::stats::{Spread, ratio};

/// What a figure must meet, judged on its median.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// No target: reported for context.
    None,
    /// Median below this value.
    Below(f64),
    /// Median / baseline median at least this.
    RatioAtLeast(f64),
    /// Median / baseline median at most this.
    RatioAtMost(f64),
}

#[derive(Clone, Debug)]
pub struct Row {
    pub section: String,
    pub figure: String,
    pub unit: &'static str,
    pub values: Vec<f64>,
    pub baseline: Option<(String, Vec<f64>)>,
    pub goal: Goal,
    pub note: String,
    /// Not measured yet: why (shown instead of a number; never a pass or a miss).
    pub todo: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    NoTarget,
}

impl Row {
    pub fn new(section: &str, figure: &str, unit: &'static str, values: Vec<f64>) -> Row {
        Row {
            section: section.into(),
            figure: figure.into(),
            unit,
            values,
            baseline: None,
            goal: Goal::None,
            note: String::new(),
            todo: None,
        }
    }

    /// A figure not measured yet, said so in the table.
    // No row is still to measure today; kept for the next one that is.
    #[allow(dead_code)]
    pub fn todo(section: &str, figure: &str, why: &str) -> Row {
        Row {
            todo: Some(why.into()),
            ..Row::new(section, figure, "", vec![])
        }
    }

    pub fn baseline(mut self, label: &str, values: Vec<f64>) -> Row {
        self.baseline = Some((label.into(), values));
        self
    }

    pub fn goal(mut self, g: Goal) -> Row {
        self.goal = g;
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.note = n.into();
        self
    }

    pub fn spread(&self) -> Option<Spread> {
        Spread::of(&self.values)
    }

    fn baseline_median(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .and_then(|(_, v)| Spread::of(v))
            .map(|s| s.median)
    }

    pub fn ratio(&self) -> Option<f64> {
        ratio(self.spread()?.median, self.baseline_median()?)
    }

    pub fn verdict(&self) -> Verdict {
        if self.todo.is_some() {
            return Verdict::NoTarget;
        }
        let Some(s) = self.spread() else {
            return Verdict::Miss;
        };
        let ok = match self.goal {
            Goal::None => return Verdict::NoTarget,
            Goal::Below(x) => s.median < x,
            Goal::RatioAtLeast(x) => self.ratio().is_some_and(|r| r >= x),
            Goal::RatioAtMost(x) => self.ratio().is_some_and(|r| r <= x),
        };
        if ok { Verdict::Pass } else { Verdict::Miss }
    }

    fn target_text(&self) -> String {
        match self.goal {
            Goal::None => "—".into(),
            Goal::Below(x) => format!("< {} {}", num(x), self.unit),
            Goal::RatioAtLeast(x) => format!("ratio ≥ {}", num(x)),
            Goal::RatioAtMost(x) => format!("ratio ≤ {}", num(x)),
        }
    }
}

/// A number with about three significant digits, no exponent.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The Markdown table for `rows`.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| Section | Figure | Median | Spread (min–max) | Runs | Baseline (median) | Ratio | Target | Result |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        if let Some(why) = &r.todo {
            out.push_str(&format!(
                "| {} | {} | TODO: {why} | — | 0 | — | — | — | — |\n",
                r.section, r.figure
            ));
            continue;
        }
        let (median, spread, runs) = match r.spread() {
            Some(s) => (
                format!("{} {}", num(s.median), r.unit),
                match s.relative_pct() {
                    Some(p) if s.runs > 1 => {
                        format!("{}–{} (±{:.0}%)", num(s.min), num(s.max), p / 2.0)
                    }
                    _ => format!("{}–{}", num(s.min), num(s.max)),
                },
                s.runs.to_string(),
            ),
            None => ("no data".into(), "—".into(), "0".into()),
        };
        let baseline = match (&r.baseline, r.baseline_median()) {
            (Some((label, _)), Some(m)) => format!("{} {} ({label})", num(m), r.unit),
            (Some((label, _)), None) => format!("no data ({label})"),
            _ => "—".into(),
        };
        let ratio = r
            .ratio()
            .map(|x| format!("{}×", num(x)))
            .unwrap_or_else(|| "—".into());
        let verdict = match r.verdict() {
            Verdict::Pass => "pass",
            Verdict::Miss => "**MISS**",
            Verdict::NoTarget => "—",
        };
        let figure = if r.note.is_empty() {
            r.figure.clone()
        } else {
            format!("{} ({})", r.figure, r.note)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.section,
            figure,
            median,
            spread,
            runs,
            baseline,
            ratio,
            r.target_text(),
            verdict
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_judged_on_the_median() {
        let r = Row::new("s", "p99", "ms", vec![10.0, 60.0, 20.0]).goal(Goal::Below(50.0));
        assert_eq!(r.verdict(), Verdict::Pass, "one slow run does not decide");
        let r = Row::new("s", "p99", "ms", vec![60.0, 60.0, 20.0]).goal(Goal::Below(50.0));
        assert_eq!(r.verdict(), Verdict::Miss);
        let r = Row::new("s", "x", "MB", vec![]).goal(Goal::Below(50.0));
        assert_eq!(r.verdict(), Verdict::Miss, "no data is never a pass");
        let r = Row::new("s", "x", "MB", vec![1.0]);
        assert_eq!(r.verdict(), Verdict::NoTarget);
    }

    #[test]
    fn ratio_targets_use_the_baseline() {
        let r = Row::new("s", "throughput", "MB/s", vec![400.0, 500.0])
            .baseline("python", vec![1000.0])
            .goal(Goal::RatioAtLeast(0.5));
        assert_eq!(r.ratio(), Some(0.45));
        assert_eq!(r.verdict(), Verdict::Miss);
        let r = Row::new("s", "throughput", "MB/s", vec![600.0])
            .baseline("python", vec![1000.0])
            .goal(Goal::RatioAtLeast(0.5));
        assert_eq!(r.verdict(), Verdict::Pass);
        let r = Row::new("s", "throughput", "MB/s", vec![600.0]).goal(Goal::RatioAtLeast(0.5));
        assert_eq!(r.verdict(), Verdict::Miss, "no baseline, no ratio, no pass");
    }

    #[test]
    fn an_overhead_ratio_passes_at_or_under_its_limit() {
        let r = Row::new("s", "wall", "s", vec![10.4])
            .baseline("bare", vec![10.0])
            .goal(Goal::RatioAtMost(1.05));
        assert_eq!(r.verdict(), Verdict::Pass);
        let r = Row::new("s", "wall", "s", vec![10.6])
            .baseline("bare", vec![10.0])
            .goal(Goal::RatioAtMost(1.05));
        assert_eq!(r.verdict(), Verdict::Miss);
        assert!(markdown(&[r]).contains("ratio ≤ 1.05"));
        let r = Row::new("s", "wall", "s", vec![1.0]).goal(Goal::RatioAtMost(1.05));
        assert_eq!(r.verdict(), Verdict::Miss, "no baseline, no ratio, no pass");
    }

    #[test]
    fn markdown_shows_median_spread_baseline_ratio_and_verdict() {
        let rows = [
            Row::new("agents", "RSS", "MB", vec![100.0, 120.0, 110.0])
                .baseline("bare ws", vec![50.0])
                .goal(Goal::Below(300.0)),
            Row::new("agents", "CPU", "%", vec![]).goal(Goal::Below(5.0)),
        ];
        let md = markdown(&rows);
        assert!(md.contains("| agents | RSS | 110 MB | 100–120 (±9%) | 3 | 50.0 MB (bare ws) | 2.20× | < 300 MB | pass |"), "{md}");
        assert!(md.contains("no data") && md.contains("**MISS**"), "{md}");
    }

    #[test]
    fn ratio_ceilings_and_todo_rows() {
        let r = Row::new("s", "busiest", "runs", vec![240.0])
            .baseline("average", vec![166.7])
            .goal(Goal::RatioAtMost(1.5));
        assert_eq!(r.verdict(), Verdict::Pass);
        let r = Row::new("s", "busiest", "runs", vec![260.0])
            .baseline("average", vec![166.7])
            .goal(Goal::RatioAtMost(1.5));
        assert_eq!(r.verdict(), Verdict::Miss);
        assert!(markdown(&[r]).contains("ratio ≤ 1.50"));
        let r = Row::new("s", "busiest", "runs", vec![1.0]).goal(Goal::RatioAtMost(1.5));
        assert_eq!(r.verdict(), Verdict::Miss, "no baseline, no pass");
        let t = Row::todo("s", "purge", "after the retention branch lands");
        assert_eq!(
            t.verdict(),
            Verdict::NoTarget,
            "a TODO is neither pass nor miss"
        );
        let md = markdown(&[t]);
        assert!(
            md.contains("| s | purge | TODO: after the retention branch lands |"),
            "{md}"
        );
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(num(1234.4), "1234");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.01234), "0.012");
        assert_eq!(num(0.0), "0");
    }
}
