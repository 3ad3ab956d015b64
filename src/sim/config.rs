//! What the simulator can be told: the command-line flags of `agenthook sim`, the same settings
//! as a JSON document for `POST /_sim/config`, and the defaults both share.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which of the two upstream error bodies the simulator answers with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ErrorShape {
    /// The seed document's flat body: `{"error": "msg", "code": "CODE", "details": "..."}`.
    Seed,
    /// Today's nested body: `{"error": {"code", "message", "httpStatus"}, "status": "error",
    /// "status_code": N}`.
    #[default]
    Current,
}

/// Which status document `GET /v1/agent/status/{id}` answers with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StatusShape {
    /// Only the seed document's fields; status is `processing`, `ready` or `failed`.
    Seed,
    /// Today's document: progress, current_step and the misleading intermediate statuses
    /// (`completed` early, `success` as a step marker) described in `upstream/NOTES.md`.
    #[default]
    Current,
}

/// Where `POST /v1/agent/generate` puts the new agent's id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GenerateShape {
    /// `{"success", "message", "agent_id", "status"}`, as both documents show it.
    #[default]
    Top,
    /// `{"success", "message", "data": {"agent_id", "status"}}`, as one older example shows it.
    Data,
}

/// How the simulator behaves. Every field can be set on the command line, changed at run time
/// with [`SimState::update`](super::SimState::update) or `POST /_sim/config`, and has the
/// default of bitHuman's Free plan.
#[derive(Args, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// The `api-secret` header value the simulator accepts (a test value, not a real secret).
    #[arg(long, default_value = "sim-secret")]
    pub api_secret: String,

    /// Time from generate to a terminal status, e.g. "30s" or "200ms". Prompts containing
    /// `[slow]` take ten times as long. Each agent keeps the time it was created with.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(with = "duration_text")]
    pub time_to_ready: Duration,

    /// Share of agents (0.0-1.0) that fail half-way; which ones is fixed by --seed.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub failure_ratio: f64,

    /// Generate requests admitted in any 60-second window (Free plan: 4).
    #[arg(long, default_value_t = 4)]
    pub generate_per_minute: u32,

    /// Status and validate requests admitted in any 60-second window (Free plan: 120).
    #[arg(long, default_value_t = 120)]
    pub read_per_minute: u32,

    /// Send `Retry-After` with 429 answers (upstream's coverage is uneven: try `false`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub retry_after: bool,

    /// Shape of error bodies.
    #[arg(long, value_enum, default_value_t = ErrorShape::Current)]
    pub error_shape: ErrorShape,

    /// Shape of status documents.
    #[arg(long, value_enum, default_value_t = StatusShape::Current)]
    pub status_shape: StatusShape,

    /// Where the generate answer puts `agent_id`.
    #[arg(long, value_enum, default_value_t = GenerateShape::Top)]
    pub generate_shape: GenerateShape,

    /// Artificial delay before every upstream answer, e.g. "250ms". The request takes effect
    /// at once; only the answer waits, as with a slow network.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    #[serde(with = "duration_text")]
    pub latency: Duration,

    /// Seed for agent ids and for which agents fail under --failure-ratio.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Push `agent.ready` / `agent.failed` webhooks here, signed with --webhook-secret, as if
    /// this URL were registered (`POST /v1/webhooks` registers more at run time).
    #[arg(long)]
    pub webhook_url: Option<String>,

    /// The signing secret of --webhook-url (a test value, not a real secret).
    #[arg(long, default_value = "whsec_sim")]
    pub webhook_secret: String,

    /// Share of webhooks (0.0-1.0) never sent at all, as when bitHuman cannot reach the
    /// receiver; which agents is fixed by --seed.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub webhook_drop_ratio: f64,

    /// Delay between an agent ending and its webhook's first attempt, e.g. "200ms".
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    #[serde(with = "duration_text")]
    pub webhook_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_secret: "sim-secret".to_owned(),
            time_to_ready: Duration::from_secs(30),
            failure_ratio: 0.0,
            generate_per_minute: 4,
            read_per_minute: 120,
            retry_after: true,
            error_shape: ErrorShape::Current,
            status_shape: StatusShape::Current,
            generate_shape: GenerateShape::Top,
            latency: Duration::ZERO,
            seed: 0,
            webhook_url: None,
            webhook_secret: "whsec_sim".to_owned(),
            webhook_drop_ratio: 0.0,
            webhook_delay: Duration::ZERO,
        }
    }
}

/// Written by hand so the secret never reaches a log line.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("api_secret", &REDACTED)
            .field("time_to_ready", &self.time_to_ready)
            .field("failure_ratio", &self.failure_ratio)
            .field("generate_per_minute", &self.generate_per_minute)
            .field("read_per_minute", &self.read_per_minute)
            .field("retry_after", &self.retry_after)
            .field("error_shape", &self.error_shape)
            .field("status_shape", &self.status_shape)
            .field("generate_shape", &self.generate_shape)
            .field("latency", &self.latency)
            .field("seed", &self.seed)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &REDACTED)
            .field("webhook_drop_ratio", &self.webhook_drop_ratio)
            .field("webhook_delay", &self.webhook_delay)
            .finish()
    }
}

const REDACTED: &str = "[redacted]";

impl SimConfig {
    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), String> {
        check_ratio(self.failure_ratio)?;
        check_ratio(self.webhook_drop_ratio).map(|_| ())
    }

    /// This configuration with the fields present in `patch` (a JSON object using the field
    /// names of this struct, durations as strings like "200ms") replaced. Unknown fields and
    /// wrong types are refused, so a typo in a test tool does not pass silently.
    pub fn merged(&self, patch: &Value) -> Result<SimConfig, String> {
        let Value::Object(changes) = patch else {
            return Err("the body must be a JSON object of configuration fields".to_owned());
        };
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Value::Object(fields) = &mut current {
            fields.extend(changes.clone());
        }
        let merged: SimConfig = serde_json::from_value(current).map_err(|e| e.to_string())?;
        merged.validate()?;
        Ok(merged)
    }

    /// The configuration as JSON with the secret blanked out, for `GET /_sim/config`.
    pub fn to_redacted_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        for key in ["api_secret", "webhook_secret"] {
            if let Some(secret) = value.get_mut(key) {
                *secret = Value::from(REDACTED);
            }
        }
        value
    }
}

/// The flags of `agenthook sim`.
#[derive(Args, Clone, Debug)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub config: SimConfig,
}

fn parse_ratio(raw: &str) -> Result<f64, String> {
    let ratio: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a number"))?;
    check_ratio(ratio)
}

fn check_ratio(ratio: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("a ratio must be between 0.0 and 1.0, got {ratio}"))
    }
}

/// Durations as humantime strings ("30s", "200ms") in JSON, matching the command line.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimArgs,
    }

    fn parse(args: &[&str]) -> Result<SimArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn command_line_defaults_equal_the_default_config() {
        let args = parse(&[]).expect("no flags parse");
        assert_eq!(args.config, SimConfig::default());
        assert_eq!(args.bind, "127.0.0.1:8090".parse().unwrap());
    }

    #[test]
    fn command_line_flags_set_every_field() {
        let args = parse(&[
            "--api-secret=s",
            "--time-to-ready=200ms",
            "--failure-ratio=0.25",
            "--generate-per-minute=10",
            "--read-per-minute=240",
            "--retry-after=false",
            "--error-shape=seed",
            "--status-shape=seed",
            "--generate-shape=data",
            "--latency=5ms",
            "--seed=9",
        ])
        .expect("flags parse");
        let c = args.config;
        assert_eq!(c.api_secret, "s");
        assert_eq!(c.time_to_ready, Duration::from_millis(200));
        assert_eq!(c.failure_ratio, 0.25);
        assert_eq!((c.generate_per_minute, c.read_per_minute), (10, 240));
        assert!(!c.retry_after);
        assert_eq!(c.error_shape, ErrorShape::Seed);
        assert_eq!(c.status_shape, StatusShape::Seed);
        assert_eq!(c.generate_shape, GenerateShape::Data);
        assert_eq!(c.latency, Duration::from_millis(5));
        assert_eq!(c.seed, 9);
    }

    #[test]
    fn a_failure_ratio_outside_zero_to_one_is_refused() {
        assert!(parse(&["--failure-ratio=1.5"]).is_err());
        assert!(parse(&["--failure-ratio=abc"]).is_err());
    }

    #[test]
    fn merging_a_patch_changes_only_the_named_fields() {
        let merged = SimConfig::default()
            .merged(&json!({"time_to_ready": "250ms", "error_shape": "seed"}))
            .expect("valid patch");
        assert_eq!(merged.time_to_ready, Duration::from_millis(250));
        assert_eq!(merged.error_shape, ErrorShape::Seed);
        assert_eq!(merged.read_per_minute, 120);
    }

    #[test]
    fn merging_refuses_unknown_fields_wrong_types_and_bad_ratios() {
        let base = SimConfig::default();
        assert!(base.merged(&json!({"time_to_redy": "1s"})).is_err());
        assert!(base.merged(&json!({"read_per_minute": "many"})).is_err());
        assert!(base.merged(&json!({"failure_ratio": 2.0})).is_err());
        assert!(base.merged(&json!([1, 2])).is_err());
    }

    #[test]
    fn the_secret_stays_out_of_debug_output_and_the_redacted_json() {
        let config = SimConfig {
            api_secret: "hunter2".into(),
            ..SimConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.to_redacted_json()["api_secret"], REDACTED);
    }
}
