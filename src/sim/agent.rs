//! A simulated agent: what was asked for, how its generation will end, and what its status
//! document says at any moment.
//!
//! Status is a pure function of the time elapsed since creation, so the same agent answers the
//! same way however often, or however rarely, it is polled.

use std::time::Duration;

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::config::StatusShape;
use super::reply::SimError;
use crate::clock::Timestamp;

const MODEL_HOST: &str = "https://models.sim.bithuman.invalid";
const FILES_HOST: &str = "https://files.sim.bithuman.invalid";

/// Where an unreachable image makes the agent fail, as a share of its generation time.
const UNREACHABLE_IMAGE_FAILS_AT: f64 = 0.1;
/// Where `[fail]` and `--failure-ratio` make the agent fail.
const SIMULATED_FAILURE_AT: f64 = 0.5;
/// Reported progress never reaches 1.0 before the end: clients may treat
/// `success` + `progress == 1.0` as terminal.
const MAX_RUNNING_PROGRESS: f64 = 0.99;

/// A state a test can force an agent into, from now on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// Hold the agent mid-generation, reporting `processing`, until told otherwise.
    Processing,
    /// Finish now: `ready`, progress 1.0.
    Ready,
    /// Finish now with the other terminal spelling: `success`, progress 1.0 (`ready` in the
    /// seed status shape, which does not know `success`).
    Success,
    /// Fail now.
    Failed {
        #[serde(default)]
        error_message: Option<String>,
    },
}

/// The generate fields the simulator understands, checked for type at the edge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Option<String>,
    pub image: Option<String>,
    pub video: Option<String>,
    pub audio: Option<String>,
    pub agent_id: Option<String>,
    pub model: Option<String>,
}

const ASPECT_RATIOS: [&str; 3] = ["16:9", "9:16", "1:1"];
const FRAMINGS: [&str; 2] = ["portrait", "full_body"];

impl GenerateRequest {
    /// Parses a generate body. Unknown fields are accepted (the service forwards them as they
    /// came); known fields with the wrong type or value are a 400, as upstream answers.
    pub fn parse(body: &[u8]) -> Result<Self, SimError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| SimError::validation(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(SimError::validation("the body must be a JSON object"));
        };
        string_field(&fields, "version")?;
        one_of(&fields, "aspect_ratio", &ASPECT_RATIOS)?;
        one_of(&fields, "video_aspect_ratio", &ASPECT_RATIOS)?;
        one_of(&fields, "framing", &FRAMINGS)?;
        if let Some(v) = fields.get("transparency").filter(|v| !v.is_null()) {
            if !v.is_boolean() {
                return Err(SimError::validation("`transparency` must be a boolean"));
            }
        }
        let request = Self {
            prompt: string_field(&fields, "prompt")?,
            image: string_field(&fields, "image")?,
            video: string_field(&fields, "video")?,
            audio: string_field(&fields, "audio")?,
            agent_id: string_field(&fields, "agent_id")?,
            model: string_field(&fields, "model")?,
        };
        request.check_custom_id()?;
        request.check_video()?;
        Ok(request)
    }

    fn check_custom_id(&self) -> Result<(), SimError> {
        let Some(id) = &self.agent_id else {
            return Ok(());
        };
        let well_formed = (1..=64).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if well_formed {
            Ok(())
        } else {
            Err(SimError::validation(
                "`agent_id` must be 1-64 characters of letters, digits, '-' or '_'",
            ))
        }
    }

    fn check_video(&self) -> Result<(), SimError> {
        match &self.video {
            Some(video) if video.contains("unsupported") => Err(SimError::new(
                400,
                "VIDEO_INPUT_NOT_SUPPORTED",
                "Video input is not supported for this model",
            )),
            _ => Ok(()),
        }
    }

    fn prompt_has(&self, trigger: &str) -> bool {
        self.prompt.as_deref().is_some_and(|p| p.contains(trigger))
    }
}

/// A null or absent field is `None`; anything but a string is a 400.
fn string_field(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, SimError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(SimError::validation(format!("`{name}` must be a string"))),
    }
}

fn one_of(fields: &Map<String, Value>, name: &str, allowed: &[&str]) -> Result<(), SimError> {
    match string_field(fields, name)? {
        Some(v) if !allowed.contains(&v.as_str()) => Err(SimError::validation(format!(
            "`{name}` must be one of {}",
            allowed.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// How generation ends when nothing intervenes.
#[derive(Clone, Debug, PartialEq)]
enum Ending {
    Ready {
        /// `[null-model]`: some engines report no model URL even when ready.
        null_model: bool,
        /// `[success-final]`: the terminal report says `success`, not `ready`.
        success_spelling: bool,
    },
    Failed {
        /// The share of the generation time at which it fails.
        at: f64,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
struct Forced {
    outcome: Outcome,
    at: Timestamp,
    /// Progress when it was forced, kept so a held or failed agent stays where it was.
    progress: f64,
}

/// What decides an agent's course, fixed when it is created.
#[derive(Clone, Debug)]
pub struct Plan {
    pub time_to_ready: Duration,
    /// `--failure-ratio` picked this agent to fail.
    pub unlucky: bool,
}

#[derive(Clone, Debug)]
pub struct Agent {
    pub id: String,
    pub created_at: Timestamp,
    total: Duration,
    ending: Ending,
    forced: Option<Forced>,
    request: GenerateRequest,
}

impl Agent {
    /// Creates an agent, reading the test triggers (see the module documentation of `sim`).
    pub fn new(id: String, request: GenerateRequest, plan: Plan, now: Timestamp) -> Self {
        let total = if request.prompt_has("[slow]") {
            plan.time_to_ready.saturating_mul(10)
        } else {
            plan.time_to_ready
        };
        let ending = ending_for(&request, plan.unlucky);
        Self {
            id,
            created_at: now,
            total,
            ending,
            forced: None,
            request,
        }
    }

    /// From `now` on, the agent reports `outcome`.
    pub fn force(&mut self, outcome: Outcome, now: Timestamp) {
        let progress = self.fraction_at(now).min(MAX_RUNNING_PROGRESS);
        self.forced = Some(Forced {
            outcome,
            at: now,
            progress,
        });
    }

    /// The `data` object of the status answer at `now`, in the given shape.
    pub fn status_data(&self, now: Timestamp, shape: StatusShape) -> Value {
        let report = self.report(now);
        let mut data = json!({
            "agent_id": self.id,
            "event_type": report.event_type(),
            "status": match shape {
                StatusShape::Seed => report.stage.seed_status(),
                StatusShape::Current => report.stage.current_status(),
            },
            "error_message": report.error_message,
            "created_at": timestamp_text(self.created_at),
            "updated_at": timestamp_text(report.updated_at),
            "system_prompt": self.request.prompt,
            "image_url": self.asset_url("image", self.request.image.as_deref()),
            "video_url": self.asset_url("video", self.request.video.as_deref()),
            "name": format!("Simulated agent {}", self.id),
            "model_url": report.model_url,
        });
        if shape == StatusShape::Current {
            if let Value::Object(fields) = &mut data {
                let extra = self.current_fields(&report);
                fields.extend(extra.map(|(name, value)| (name.to_owned(), value)));
            }
        }
        data
    }

    /// What the current status shape adds to the seed's fields.
    fn current_fields(&self, report: &Report) -> [(&'static str, Value); 6] {
        let voice_ready = report.step > Step::VoiceImage;
        let supported: Vec<String> = match &self.request.model {
            Some(model) => vec![model.clone()],
            None => vec!["essence".into(), "expression".into()],
        };
        [
            (
                "description",
                json!(self
                    .request
                    .prompt
                    .as_deref()
                    .map(summary)
                    .unwrap_or_default()),
            ),
            (
                "voice_id",
                json!(voice_ready.then(|| format!("sim-voice-{}", self.id.to_lowercase()))),
            ),
            ("progress", json!(round_progress(report.progress))),
            ("progress_msg", json!(report.progress_msg())),
            ("current_step", json!(report.step.as_str())),
            ("supported_models", json!(supported)),
        ]
    }

    fn report(&self, now: Timestamp) -> Report {
        if let Some(forced) = &self.forced {
            return self.forced_report(forced);
        }
        let fraction = self.fraction_at(now);
        match &self.ending {
            Ending::Failed { at, message } if fraction >= *at => Report {
                stage: Stage::Failed,
                progress: *at,
                step: phase_at(*at).step,
                error_message: Some(message.clone()),
                model_url: None,
                updated_at: self.time_at(*at),
            },
            Ending::Ready {
                null_model,
                success_spelling,
            } if fraction >= 1.0 => Report {
                stage: if *success_spelling {
                    Stage::Success
                } else {
                    Stage::Ready
                },
                progress: 1.0,
                step: Step::Done,
                error_message: None,
                model_url: (!null_model).then(|| self.model_url()),
                updated_at: self.time_at(1.0),
            },
            _ => self.running_report(fraction),
        }
    }

    fn running_report(&self, fraction: f64) -> Report {
        let phase = phase_at(fraction);
        Report {
            stage: Stage::Running(phase.status),
            progress: fraction.min(MAX_RUNNING_PROGRESS),
            step: phase.step,
            error_message: None,
            model_url: None,
            updated_at: self.time_at(phase.from),
        }
    }

    fn forced_report(&self, forced: &Forced) -> Report {
        let finished = |stage| Report {
            stage,
            progress: 1.0,
            step: Step::Done,
            error_message: None,
            model_url: (!self.null_model()).then(|| self.model_url()),
            updated_at: forced.at,
        };
        match &forced.outcome {
            Outcome::Ready => finished(Stage::Ready),
            Outcome::Success => finished(Stage::Success),
            Outcome::Processing => Report {
                stage: Stage::Running("processing"),
                progress: forced.progress,
                step: phase_at(forced.progress).step,
                error_message: None,
                model_url: None,
                updated_at: forced.at,
            },
            Outcome::Failed { error_message } => Report {
                stage: Stage::Failed,
                progress: forced.progress,
                step: phase_at(forced.progress).step,
                error_message: Some(
                    error_message
                        .clone()
                        .unwrap_or_else(|| "Generation failed: forced by the simulator".into()),
                ),
                model_url: None,
                updated_at: forced.at,
            },
        }
    }

    /// Once the agent has ended at `now`: the webhook event it causes and, for a failure, the
    /// reason.
    pub fn ended(&self, now: Timestamp) -> Option<(&'static str, Option<String>)> {
        let report = self.report(now);
        match report.stage {
            Stage::Ready | Stage::Success => Some(("agent.ready", None)),
            Stage::Failed => Some(("agent.failed", report.error_message)),
            Stage::Running(_) => None,
        }
    }

    fn null_model(&self) -> bool {
        matches!(
            self.ending,
            Ending::Ready {
                null_model: true,
                ..
            }
        )
    }

    /// The share of the generation time elapsed at `now`, from 0.0 (may exceed 1.0).
    fn fraction_at(&self, now: Timestamp) -> f64 {
        if self.total.is_zero() {
            return 1.0;
        }
        let elapsed = (now - self.created_at).to_std().unwrap_or(Duration::ZERO);
        elapsed.as_secs_f64() / self.total.as_secs_f64()
    }

    fn time_at(&self, fraction: f64) -> Timestamp {
        let offset = self.total.mul_f64(fraction.clamp(0.0, 1.0));
        self.created_at + chrono::Duration::from_std(offset).unwrap_or(chrono::Duration::zero())
    }

    fn model_url(&self) -> String {
        format!("{MODEL_HOST}/{}.imx", self.id)
    }

    /// Upstream stores the assets it is given; base64 data comes back as a URL of its own.
    fn asset_url(&self, kind: &str, given: Option<&str>) -> Option<String> {
        given.map(|g| {
            if g.starts_with("http://") || g.starts_with("https://") {
                g.to_owned()
            } else {
                format!("{FILES_HOST}/{}/{kind}", self.id)
            }
        })
    }
}

fn ending_for(request: &GenerateRequest, unlucky: bool) -> Ending {
    let unreachable_image = request
        .image
        .as_deref()
        .is_some_and(|i| i.contains("unreachable"));
    if unreachable_image {
        Ending::Failed {
            at: UNREACHABLE_IMAGE_FAILS_AT,
            message: "Image processing failed: could not download image".into(),
        }
    } else if request.prompt_has("[fail]") || unlucky {
        Ending::Failed {
            at: SIMULATED_FAILURE_AT,
            message: "Generation failed: simulated failure".into(),
        }
    } else {
        Ending::Ready {
            null_model: request.prompt_has("[null-model]"),
            success_spelling: request.prompt_has("[success-final]"),
        }
    }
}

/// The generation steps of the current docs, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Payment,
    Persona,
    VoiceImage,
    Video,
    LipSync,
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Payment => "payment",
            Step::Persona => "persona",
            Step::VoiceImage => "voice_image",
            Step::Video => "video",
            Step::LipSync => "lip_sync",
            Step::Done => "done",
        }
    }

    /// An opaque event name, as upstream publishes no list of them.
    fn event_type(self) -> &'static str {
        match self {
            Step::Payment => "payment_processed",
            Step::Persona => "persona_created",
            Step::VoiceImage => "voice_image_created",
            Step::Video => "video_created",
            Step::LipSync | Step::Done => "lip_created",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Step::Payment => "Processing payment",
            Step::Persona => "Writing the persona",
            Step::VoiceImage => "Creating voice and image",
            Step::Video => "Rendering video",
            Step::LipSync => "Synchronising lips",
            Step::Done => "Agent ready",
        }
    }
}

/// A stretch of generation with the status the current API reports during it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    /// Where the phase starts, as a share of the generation time.
    pub from: f64,
    pub status: &'static str,
    pub step: Step,
}

/// The status timeline of the current API, traps included: `completed` shows up near 5 % and
/// `success` marks finished steps near 20 % and 45 %; none of them is terminal.
pub const PHASES: [Phase; 8] = [
    phase(0.00, "processing", Step::Payment),
    phase(0.03, "completed", Step::Payment),
    phase(0.08, "processing", Step::Persona),
    phase(0.18, "success", Step::Persona),
    phase(0.23, "generating", Step::VoiceImage),
    phase(0.42, "success", Step::VoiceImage),
    phase(0.48, "generating", Step::Video),
    phase(0.75, "processing", Step::LipSync),
];

const fn phase(from: f64, status: &'static str, step: Step) -> Phase {
    Phase { from, status, step }
}

/// The phase a running agent is in at `fraction` of its generation time.
pub fn phase_at(fraction: f64) -> Phase {
    PHASES
        .iter()
        .rev()
        .find(|p| fraction >= p.from)
        .copied()
        .unwrap_or(PHASES[0])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    /// Still generating, with the status the current API shows at this point.
    Running(&'static str),
    Ready,
    /// Finished, reported with the spelling `success`.
    Success,
    Failed,
}

impl Stage {
    fn current_status(self) -> &'static str {
        match self {
            Stage::Running(status) => status,
            Stage::Ready => "ready",
            Stage::Success => "success",
            Stage::Failed => "failed",
        }
    }

    fn seed_status(self) -> &'static str {
        match self {
            Stage::Running(_) => "processing",
            Stage::Ready | Stage::Success => "ready",
            Stage::Failed => "failed",
        }
    }
}

/// Everything the status document says, before it is shaped.
struct Report {
    stage: Stage,
    progress: f64,
    step: Step,
    error_message: Option<String>,
    model_url: Option<String>,
    updated_at: Timestamp,
}

impl Report {
    fn event_type(&self) -> &'static str {
        match self.stage {
            Stage::Failed => "generation_failed",
            _ => self.step.event_type(),
        }
    }

    fn progress_msg(&self) -> String {
        match self.stage {
            Stage::Failed => "Generation failed".into(),
            _ => self.step.message().into(),
        }
    }
}

fn round_progress(progress: f64) -> f64 {
    (progress.clamp(0.0, 1.0) * 100.0).round() / 100.0
}

fn summary(prompt: &str) -> String {
    prompt.chars().take(80).collect()
}

/// Formatted like upstream's examples: `2025-08-01T13:58:51.907177+00:00`.
fn timestamp_text(at: Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// A 64-bit mixer (SplitMix64): spreads consecutive inputs over the whole range, so ids and
/// failure picks derived from (seed, index) look random yet repeat exactly for the same seed.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// An id shaped like upstream's (`A91XMB7113`): `A`, 2 digits, 3 letters, 4 digits.
pub fn generated_id(seed: u64, index: u64) -> String {
    let mut bits = mix(seed ^ mix(index));
    let mut take = |base: u64, first: u8| {
        let c = char::from(first + (bits % base) as u8);
        bits /= base;
        c
    };
    let mut id = String::from("A");
    id.extend((0..2).map(|_| take(10, b'0')));
    id.extend((0..3).map(|_| take(26, b'A')));
    id.extend((0..4).map(|_| take(10, b'0')));
    id
}

/// Whether `--failure-ratio` picks the agent with this index to fail.
pub fn unlucky(seed: u64, index: u64, failure_ratio: f64) -> bool {
    const SALT: u64 = 0xFA11_u64;
    let draw = mix(mix(seed ^ SALT) ^ index) >> 11; // 53 random bits
    (draw as f64 / (1u64 << 53) as f64) < failure_ratio
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn t0() -> Timestamp {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    fn agent(prompt: &str) -> Agent {
        let request = GenerateRequest {
            prompt: Some(prompt.into()),
            ..GenerateRequest::default()
        };
        let plan = Plan {
            time_to_ready: Duration::from_secs(100),
            unlucky: false,
        };
        Agent::new("A00AAA0000".into(), request, plan, t0())
    }

    fn status_at(agent: &Agent, secs: i64, shape: StatusShape) -> Value {
        agent.status_data(t0() + chrono::Duration::seconds(secs), shape)
    }

    #[test]
    fn the_timeline_shows_the_trap_statuses_before_ready() {
        assert_eq!(phase_at(0.0).status, "processing");
        assert_eq!(phase_at(0.05).status, "completed");
        assert_eq!(phase_at(0.2).status, "success");
        assert_eq!(phase_at(0.3).status, "generating");
        assert_eq!(phase_at(0.45).status, "success");
        assert_eq!(phase_at(0.6).status, "generating");
        assert_eq!(phase_at(0.9).status, "processing");
        assert_eq!(phase_at(0.9).step, Step::LipSync);
    }

    #[test]
    fn progress_reaches_one_only_at_the_end() {
        let a = agent("plain");
        assert_eq!(status_at(&a, 99, StatusShape::Current)["progress"], 0.99);
        let end = status_at(&a, 100, StatusShape::Current);
        assert_eq!(end["progress"], 1.0);
        assert_eq!(end["status"], "ready");
        assert_eq!(end["current_step"], "done");
        assert_eq!(
            end["model_url"],
            "https://models.sim.bithuman.invalid/A00AAA0000.imx"
        );
    }

    #[test]
    fn the_seed_shape_only_ever_says_processing_ready_or_failed() {
        let a = agent("plain");
        for secs in [0, 5, 20, 30, 45, 60, 90] {
            assert_eq!(
                status_at(&a, secs, StatusShape::Seed)["status"],
                "processing"
            );
        }
        assert_eq!(status_at(&a, 100, StatusShape::Seed)["status"], "ready");
        let s = agent("[success-final]");
        assert_eq!(status_at(&s, 100, StatusShape::Seed)["status"], "ready");
    }

    #[test]
    fn a_fail_prompt_fails_half_way_and_stays_failed() {
        let a = agent("please [fail]");
        assert_eq!(
            status_at(&a, 49, StatusShape::Current)["status"],
            "generating"
        );
        for secs in [50, 200] {
            let data = status_at(&a, secs, StatusShape::Current);
            assert_eq!(data["status"], "failed");
            assert_eq!(data["progress"], 0.5);
            assert_eq!(
                data["error_message"],
                "Generation failed: simulated failure"
            );
            assert_eq!(data["model_url"], Value::Null);
        }
    }

    #[test]
    fn slow_prompts_take_ten_times_as_long() {
        let a = agent("[slow]");
        assert_eq!(
            status_at(&a, 100, StatusShape::Seed)["status"],
            "processing"
        );
        assert_eq!(status_at(&a, 1000, StatusShape::Seed)["status"], "ready");
    }

    #[test]
    fn a_forced_outcome_wins_over_the_plan() {
        let mut a = agent("[fail]");
        a.force(Outcome::Ready, t0() + chrono::Duration::seconds(10));
        assert_eq!(status_at(&a, 60, StatusShape::Current)["status"], "ready");
        a.force(Outcome::Processing, t0() + chrono::Duration::seconds(60));
        let held = status_at(&a, 500, StatusShape::Current);
        assert_eq!(held["status"], "processing");
        assert_eq!(held["progress"], 0.6);
    }

    #[test]
    fn generated_ids_look_like_upstream_ids_and_repeat_per_seed() {
        for index in 0..500 {
            let id = generated_id(42, index);
            let b = id.as_bytes();
            assert_eq!(b.len(), 10, "{id}");
            assert_eq!(b[0], b'A');
            assert!(b[1..3].iter().all(u8::is_ascii_digit), "{id}");
            assert!(b[3..6].iter().all(u8::is_ascii_uppercase), "{id}");
            assert!(b[6..].iter().all(u8::is_ascii_digit), "{id}");
        }
        assert_eq!(generated_id(42, 7), generated_id(42, 7));
        assert_ne!(generated_id(42, 7), generated_id(43, 7));
    }

    #[test]
    fn the_failure_ratio_picks_a_fixed_share_per_seed() {
        let picks = |seed| {
            (0..2000)
                .filter(|&i| unlucky(seed, i, 0.25))
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(1), picks(1));
        assert_ne!(picks(1), picks(2));
        let share = picks(1).len() as f64 / 2000.0;
        assert!((0.2..0.3).contains(&share), "share {share}");
        assert!((0..100).all(|i| !unlucky(1, i, 0.0)));
        assert!((0..100).all(|i| unlucky(1, i, 1.0)));
    }

    #[test]
    fn parsing_refuses_wrong_types_and_values_but_keeps_unknown_fields_legal() {
        assert!(GenerateRequest::parse(br#"{"prompt": 5}"#).is_err());
        assert!(GenerateRequest::parse(br#"{"aspect_ratio": "4:3"}"#).is_err());
        assert!(GenerateRequest::parse(br#"{"framing": "side"}"#).is_err());
        assert!(GenerateRequest::parse(br#"{"transparency": "yes"}"#).is_err());
        assert!(GenerateRequest::parse(br#"{"agent_id": "has space"}"#).is_err());
        assert!(GenerateRequest::parse(b"not json").is_err());
        assert!(GenerateRequest::parse(b"[]").is_err());
        let ok = GenerateRequest::parse(
            br#"{"prompt": "p", "aspect_ratio": "9:16", "framing": "full_body",
                "transparency": true, "extra": {"anything": 1}, "image": null}"#,
        )
        .expect("valid body");
        assert_eq!(ok.prompt.as_deref(), Some("p"));
        assert_eq!(ok.image, None);
    }

    #[test]
    fn an_unsupported_video_is_refused_with_its_own_code() {
        let err = GenerateRequest::parse(br#"{"video": "https://x/unsupported.mp4"}"#)
            .expect_err("refused");
        assert_eq!(err.code, "VIDEO_INPUT_NOT_SUPPORTED");
        assert_eq!(err.status, 400);
    }
}
