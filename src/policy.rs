//! Policy files: YAML → [`Policy`] (types and checks in
//! `backstop_core::policy`), with every error naming the file, line, column
//! and field path, e.g.
//! `policy.yaml:12:7: triggers[1].above: expected a percentage like "5%"`.
//!
//! Reading a policy has no side effects: `backstop policy check` and, later,
//! `rollout start` share this path, so a broken policy is refused before
//! anything starts or changes.

use backstop_core::policy::Policy;

use std::path::Path;

/// Largest policy file read: a policy is a page of YAML, and the bound keeps
/// a wrong path (a model artifact) from being read into memory.
pub const POLICY_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// A policy file that could not be used.
pub type PolicyError = crate::yaml::FileError;

/// Reads, parses and checks a policy file.
pub fn load(file: &Path) -> Result<Policy, PolicyError> {
    let whole_file = |message: String| PolicyError::whole_file(file, message);
    let size = std::fs::metadata(file)
        .map_err(|e| whole_file(format!("cannot read: {e}")))?
        .len();
    if size > POLICY_FILE_MAX_BYTES {
        return Err(whole_file(format!(
            "{size} bytes is too big for a policy (at most {POLICY_FILE_MAX_BYTES})"
        )));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| whole_file(format!("cannot read: {e}")))?;
    parse(file, &text)
}

/// Parses and checks policy text; `file` only names it in errors. Returns
/// the normalized policy (implied fields spelled out).
pub fn parse(file: &Path, text: &str) -> Result<Policy, PolicyError> {
    let policy: Policy = crate::yaml::deserialize(file, text).map_err(|mut e| {
        // Serde speaks of enum "variants"; users wrote a metric name.
        if e.path.ends_with(".metric") {
            e.message = e.message.replacen("unknown variant", "unknown metric", 1);
        }
        e
    })?;
    policy
        .check()
        .map_err(|e| PolicyError::at_field(file, text, e.path, e.message))?;
    Ok(policy.normalized())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_core::policy::{Canary, Metric, Period, RelativeTo, Strategy, Threshold};

    const GOOD: &str = r#"model: fraud-scorer
candidate: v2
strategy: { canary: { steps: [1, 5, 25, 50, 100], bake: 2m } }
triggers:
  - { metric: latency_p95, relative_to: baseline, above: "+30%", for: 5m, action: rollback }
  - { metric: error_rate, above: "5%", for: 3m, action: rollback }
  - { metric: timeout_rate, above: "+2pp", action: pause }
"#;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        super::parse(Path::new("policy.yaml"), text)
    }

    /// The error for `text`, with the message checked to contain `message`.
    fn rejected(text: &str, path: &str, message: &str) -> PolicyError {
        let error = parse(text).unwrap_err();
        assert_eq!(error.path, path, "{error}");
        assert!(error.message.contains(message), "{error}");
        error
    }

    #[test]
    fn parses_the_issue_example() {
        let policy = parse(GOOD).unwrap();
        assert_eq!(policy.model, "fraud-scorer");
        assert_eq!(policy.baseline, None);
        let Strategy::Canary(Canary { steps, bake, .. }) = &policy.strategy else {
            panic!("{:?}", policy.strategy)
        };
        assert_eq!(steps, &[1.0, 5.0, 25.0, 50.0, 100.0]);
        assert_eq!(bake.as_ms(), 120_000);
        let t = &policy.triggers;
        assert_eq!(t[0].metric, Metric::LatencyP95);
        assert_eq!(t[0].above, Some(Threshold::RelativePercent(30.0)));
        assert_eq!(t[0].for_period, Period::from_ms(300_000));
        assert_eq!(t[1].above, Some(Threshold::RatePercent(5.0)));
        assert_eq!(t[1].relative_to, None);
        assert_eq!(t[2].above, Some(Threshold::PercentagePoints(2.0)));
        assert_eq!(t[2].min_sample, 100, "default");
        assert_eq!(t[2].for_period, Period::from_ms(0), "default");
        assert_eq!(
            t[2].relative_to,
            Some(RelativeTo::Baseline),
            "normalized: a relative threshold is compared with the baseline"
        );
    }

    #[test]
    fn every_strategy_parses() {
        for strategy in [
            "{ canary: { steps: [0.5, 100], bake: 30s, approval: [100] } }",
            "{ blue_green: { warmup: 30s, bake: 5m } }",
            "{ shadow: { percent: 10, duration: 10m } }",
            "{ shadow: { percent: 10, duration: 10m } }",
            "{ linear: { step: 10, interval: 1m } }",
        ] {
            let text = GOOD.replace(
                "{ canary: { steps: [1, 5, 25, 50, 100], bake: 2m } }",
                strategy,
            );
            parse(&text).unwrap_or_else(|e| panic!("{strategy}: {e}"));
        }
    }

    #[test]
    fn type_errors_name_file_line_column_and_field() {
        let text = GOOD.replace("for: 3m", "for: 3");
        let error = parse(&text).unwrap_err();
        assert_eq!(
            error.to_string(),
            "policy.yaml:6:45: triggers[1].for: \"3\" is not a duration like \"30s\", \"2m\", \"1h\" or \"1m30s\""
        );
        let text = GOOD.replace("\"5%\"", "\"five\"");
        let error = rejected(&text, "triggers[1].above", "is not a threshold like");
        assert_eq!((error.line, error.column), (Some(6), Some(34)));
    }

    #[test]
    fn semantic_errors_name_file_line_column_and_field() {
        let text = GOOD.replace("\"5%\"", "\"250ms\"");
        let error = parse(&text).unwrap_err();
        assert_eq!(
            error.to_string(),
            "policy.yaml:6:27: triggers[1].above: expected a percentage like \"5%\" (error_rate is a rate), or a change vs the baseline like \"+2pp\" or \"+30%\""
        );
    }

    #[test]
    fn block_style_errors_point_at_the_field() {
        let text = "model: m\ncandidate: v2\nstrategy:\n  linear:\n    step: 10\n    interval: 1m\ntriggers:\n  - metric: error_rate\n    relative_to: baseline\n    above: 5%\n    action: rollback\n";
        let error = rejected(text, "triggers[0].relative_to", "absolute threshold");
        assert_eq!((error.line, error.column), (Some(9), Some(5)));
    }

    #[test]
    fn latency_metrics_refuse_rates() {
        let text = GOOD.replace("\"+30%\"", "\"5%\"");
        rejected(
            &text,
            "triggers[0].above",
            "expected a latency like \"250ms\"",
        );
        let text = GOOD.replace("\"+30%\"", "\"+2pp\"");
        rejected(&text, "triggers[0].above", "expected a latency");
        let text = GOOD.replace("\"+30%\"", "\"250ms\"");
        rejected(&text, "triggers[0].relative_to", "absolute threshold");
        let text = GOOD.replace("relative_to: baseline, above: \"+30%\"", "below: 1s");
        parse(&text).unwrap();
    }

    #[test]
    fn steps_must_increase_and_end_at_100() {
        let with_steps = |steps: &str| GOOD.replace("[1, 5, 25, 50, 100]", steps);
        rejected(
            &with_steps("[1, 25, 5, 100]"),
            "strategy.canary.steps[2]",
            "steps must increase: 5 follows 25",
        );
        rejected(
            &with_steps("[1, 5, 5, 100]"),
            "strategy.canary.steps[2]",
            "must increase",
        );
        rejected(
            &with_steps("[1, 5, 50]"),
            "strategy.canary.steps",
            "the last step must be 100",
        );
        rejected(
            &with_steps("[0, 100]"),
            "strategy.canary.steps[0]",
            "above 0",
        );
        rejected(
            &with_steps("[1, 101]"),
            "strategy.canary.steps[1]",
            "at most 100",
        );
        rejected(&with_steps("[]"), "strategy.canary.steps", "1 to 100 steps");
        let error = rejected(&with_steps("[1, 5, 50]"), "strategy.canary.steps", "");
        assert_eq!((error.line, error.column), (Some(3), Some(23)));
        let text = GOOD.replace("bake: 2m", "bake: 2m, approval: [30]");
        rejected(
            &text,
            "strategy.canary.approval[0]",
            "30 is not one of the steps",
        );
    }

    #[test]
    fn unknown_metrics_list_the_known_ones() {
        let text = GOOD.replace("latency_p95", "latency_p90");
        let error = rejected(
            &text,
            "triggers[0].metric",
            "unknown metric `latency_p90`, expected one of",
        );
        for known in Metric::ALL {
            assert!(error.message.contains(known.name()), "{error}");
        }
        assert_eq!(error.line, Some(5));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = GOOD.replace("for: 5m", "fro: 5m");
        let error = rejected(
            &text,
            "triggers[0].fro",
            "unknown field `fro`, expected one of `metric`",
        );
        assert!(error.message.starts_with("unknown field"), "{error}");
        let text = format!("{GOOD}rollback_on_error: true\n");
        rejected(
            &text,
            "rollback_on_error",
            "unknown field `rollback_on_error`",
        );
        let text = GOOD.replace("bake: 2m", "bake: 2m, wait: 1m");
        rejected(&text, "strategy.canary.wait", "unknown field `wait`");
    }

    #[test]
    fn relative_to_needs_a_relative_threshold() {
        let text = GOOD.replace(
            "{ metric: error_rate, above",
            "{ metric: error_rate, relative_to: baseline, above",
        );
        let error = rejected(
            &text,
            "triggers[1].relative_to",
            "\"5%\" is an absolute threshold",
        );
        assert_eq!((error.line, error.column), (Some(6), Some(27)));
    }

    #[test]
    fn other_rejections() {
        rejected(
            &GOOD.replace("candidate: v2", "candidate: v 2"),
            "candidate",
            "names are",
        );
        rejected(
            &GOOD.replace("candidate: v2", "candidate: v2\nbaseline: v2"),
            "baseline",
            "must differ",
        );
        let no_triggers = GOOD.split("triggers:").next().unwrap().to_string() + "triggers: []\n";
        rejected(&no_triggers, "triggers", "at least one trigger");
        rejected(
            &GOOD.replace("above: \"+2pp\"", "above: \"+2pp\", below: \"1%\""),
            "triggers[2].below",
            "exactly one of `above` or `below`",
        );
        rejected(
            &GOOD.replace(", above: \"+2pp\"", ""),
            "triggers[2].metric",
            "needs a threshold",
        );
        rejected(
            &GOOD.replace("action: pause", "action: pause, min_sample: 0"),
            "triggers[2].min_sample",
            "at least 1",
        );
        rejected(
            &GOOD.replace("action: pause", "action: explode"),
            "triggers[2].action",
            "unknown variant `explode`",
        );
        rejected(
            &GOOD.replace("action: pause", "action: pause, severity: fatal"),
            "triggers[2].severity",
            "expected `critical` or `warning`",
        );
        rejected(
            &GOOD.replace("bake: 2m", "bake: 8d"),
            "strategy.canary.bake",
            "is not a duration like",
        );
        let error = rejected(
            &GOOD.replace(
                "{ canary: { steps: [1, 5, 25, 50, 100], bake: 2m } }",
                "{ canary: { steps: [100], bake: 2m }, linear: { step: 10, interval: 1m } }",
            ),
            "strategy",
            "set exactly one of `canary`, `blue_green`, `shadow` or `linear`",
        );
        assert_eq!((error.line, error.column), (Some(3), Some(1)), "{error}");
        rejected(
            &format!("{GOOD}max_auto_actions_per_hour: 0\n"),
            "max_auto_actions_per_hour",
            "at least 1",
        );
        rejected(
            &format!("{GOOD}sticky: {{ header: x-user, cookie: uid }}\n"),
            "sticky",
            "exactly one",
        );
        rejected(
            &format!("{GOOD}cohorts:\n  - {{ header: x-tenant, values: [beta], version: v9 }}\n"),
            "cohorts[0].version",
            "unknown version \"v9\"",
        );
        rejected(
            &format!("{GOOD}cohorts:\n  - {{ key_range: [0, 100], version: v2 }}\n"),
            "cohorts[0].key_range",
            "needs a sticky key",
        );
        rejected("", "", "");
        rejected("- 1\n- 2\n", "", "invalid type");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let policy = parse(include_str!("../examples/policy.yaml")).unwrap();
        assert!(policy.triggers.len() >= 3);
        assert!(!policy.cohorts.is_empty());
    }

    /// A deterministic stand-in for the fuzz target that runs with the
    /// tests: every one-character edit of the example is an error or a
    /// policy, never a panic, and accepted edits survive a round trip.
    #[test]
    fn edited_examples_never_panic() {
        let example = include_str!("../examples/policy.yaml");
        // Comments carry no meaning; edit the lines that do.
        let text: String = example
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{}\n", l.split(" #").next().unwrap_or(l)))
            .collect();
        let mut accepted = 0;
        for (i, c) in text.char_indices() {
            let next = i + c.len_utf8();
            for replacement in ["", "x", "-", ":", "{", "[", "0", " ", "\n", "\"", "%"] {
                let edited = format!("{}{replacement}{}", &text[..i], &text[next..]);
                let Ok(policy) = parse(&edited) else { continue };
                accepted += 1;
                let yaml = serde_yaml_ng::to_string(&policy).unwrap();
                assert_eq!(parse(&yaml).as_ref(), Ok(&policy), "{edited}");
            }
        }
        assert!(accepted > 0);
    }

    #[test]
    fn normalized_policies_parse_back_to_themselves() {
        let policy = parse(include_str!("../examples/policy.yaml")).unwrap();
        let yaml = serde_yaml_ng::to_string(&policy).unwrap();
        assert_eq!(parse(&yaml).unwrap(), policy, "{yaml}");
    }
}
