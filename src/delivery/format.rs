//! Event bodies for each destination format.
//!
//! A delivery stores the standard event body; the body actually sent is rendered from it at
//! send time, and those exact bytes are what gets signed. `standard` is the body itself; `slack`
//! and `discord` turn it into a message their incoming webhooks display, within each platform's
//! size limits (a message over a limit is refused by the platform, so the event would never
//! arrive). Values that come from users or from upstream (names, prompts, error messages) are
//! escaped so they cannot inject mentions, links or formatting into the channel.

use serde_json::{json, Map, Value};

use crate::domain::{Format, Payload};

/// Slack limits, in characters (api.slack.com/reference/block-kit).
const SLACK_HEADER_MAX: usize = 150;
const SLACK_SECTION_TEXT_MAX: usize = 3000;
const SLACK_FIELD_TEXT_MAX: usize = 2000;
const SLACK_CONTEXT_TEXT_MAX: usize = 3000;
const SLACK_FALLBACK_TEXT_MAX: usize = 40_000;

/// Discord limit on `content`, in characters.
const DISCORD_CONTENT_MAX: usize = 2000;

/// Long free text is cut well below the platform limits so a notification stays readable and
/// the identifying lines after it (job id, agent id) still fit.
const ERROR_PREVIEW_CHARS: usize = 1000;
const PROMPT_PREVIEW_CHARS: usize = 300;
const VALUE_PREVIEW_CHARS: usize = 500;

const ELLIPSIS: char = '…';

/// The body bytes for a destination `format`, rendered from the standard event `payload`
/// (`{"type", "timestamp", "data"}`). Never fails: missing or odd fields are left out.
pub fn render(format: Format, payload: &Value) -> Vec<u8> {
    let body = match format {
        Format::Standard => return serde_json::to_vec(payload).expect("a JSON value serialises"),
        Format::Slack => slack_message(&EventSummary::from_payload(payload)),
        Format::Discord => discord_message(&EventSummary::from_payload(payload)),
    };
    body.to_string().into_bytes()
}

/// [`render`] for a stored payload: the standard format sends the stored bytes as they are.
pub fn render_payload(format: Format, payload: &Payload) -> Vec<u8> {
    match format {
        Format::Standard => payload.json().as_bytes().to_vec(),
        Format::Slack | Format::Discord => render(format, payload.value()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Ready,
    Failed,
    Test,
    Other,
}

/// The parts of a standard event body that a chat message shows. Empty strings count as absent.
#[derive(Debug)]
struct EventSummary<'a> {
    kind: EventKind,
    event_type: &'a str,
    timestamp: Option<&'a str>,
    job_id: Option<&'a str>,
    agent_id: Option<&'a str>,
    name: Option<&'a str>,
    model_url: Option<&'a str>,
    system_prompt: Option<&'a str>,
    error_code: Option<&'a str>,
    error_message: Option<&'a str>,
    test_message: Option<&'a str>,
    /// Compact JSON of a non-empty `metadata` object.
    metadata: Option<String>,
}

impl<'a> EventSummary<'a> {
    fn from_payload(payload: &'a Value) -> Self {
        let data = payload.get("data").unwrap_or(&Value::Null);
        let event_type = text(payload, "type").unwrap_or("unknown");
        let kind = match event_type {
            "agent.ready" => EventKind::Ready,
            "agent.failed" => EventKind::Failed,
            "webhook.test" => EventKind::Test,
            _ => EventKind::Other,
        };
        EventSummary {
            kind,
            event_type,
            timestamp: text(payload, "timestamp"),
            job_id: text(data, "job_id"),
            agent_id: text(data, "agent_id"),
            name: text(data, "name"),
            model_url: text(data, "model_url"),
            system_prompt: text(data, "system_prompt"),
            error_code: text(data, "error_code"),
            error_message: text(data, "error_message"),
            test_message: text(data, "message"),
            metadata: data
                .get("metadata")
                .and_then(Value::as_object)
                .filter(|metadata| !metadata.is_empty())
                .map(|metadata| Value::Object(metadata.clone()).to_string()),
        }
    }

    /// What the event is about, for the headline: the agent when upstream has named it, else
    /// the job (a job refused before upstream accepted it has no agent id).
    fn subject(&self) -> (&'static str, Option<&'a str>) {
        match (self.agent_id, self.job_id) {
            (Some(agent), _) => ("Agent", Some(agent)),
            (None, Some(job)) => ("Job", Some(job)),
            (None, None) => ("Agent", None),
        }
    }

    /// The failure as the user should read it: the message, else the code.
    fn failure(&self) -> &'a str {
        self.error_message
            .or(self.error_code)
            .unwrap_or("unknown error")
    }
}

/// A non-blank string field of `value`.
fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

// ---------------------------------------------------------------------------------------------
// Slack
// ---------------------------------------------------------------------------------------------

/// `{"text": fallback, "blocks": [header, section with fields, context]}`.
fn slack_message(event: &EventSummary<'_>) -> Value {
    let (noun, id) = event.subject();
    let subject = match id {
        Some(id) => format!("{noun} {id}"),
        None => noun.to_owned(),
    };
    let header = match event.kind {
        EventKind::Ready => format!("{subject} is ready"),
        EventKind::Failed => format!("{subject} failed"),
        EventKind::Test => "agenthook test event".to_owned(),
        EventKind::Other => format!("agenthook event {}", event.event_type),
    };

    let escaped_subject = match id {
        Some(id) => format!("{noun} *{}*", slack_escape(id)),
        None => noun.to_owned(),
    };
    let headline = match event.kind {
        EventKind::Ready => format!(":white_check_mark: {escaped_subject} is ready"),
        EventKind::Failed => format!(
            ":x: {escaped_subject} failed: {}",
            slack_escape(&truncate_chars(event.failure(), ERROR_PREVIEW_CHARS))
        ),
        EventKind::Test => match event.test_message {
            Some(message) => format!(
                ":wave: Test event from agenthook: {}",
                slack_escape(&truncate_chars(message, VALUE_PREVIEW_CHARS))
            ),
            None => ":wave: Test event from agenthook".to_owned(),
        },
        EventKind::Other => format!(
            ":bell: agenthook event {}",
            slack_code(&truncate_chars(event.event_type, VALUE_PREVIEW_CHARS))
        ),
    };

    let fields: Vec<Value> = [
        (
            "Name",
            event.name.map(|v| slack_preview(v, VALUE_PREVIEW_CHARS)),
        ),
        (
            "Model URL",
            event
                .model_url
                .map(|v| slack_preview(v, VALUE_PREVIEW_CHARS)),
        ),
        ("Job ID", event.job_id.map(slack_code_preview)),
        ("Agent ID", event.agent_id.map(slack_code_preview)),
        ("Error code", event.error_code.map(slack_code_preview)),
        (
            "System prompt",
            event
                .system_prompt
                .map(|v| slack_preview(v, PROMPT_PREVIEW_CHARS)),
        ),
        (
            "Metadata",
            event.metadata.as_deref().map(slack_code_preview),
        ),
    ]
    .into_iter()
    .filter_map(|(label, value)| {
        let value = value?;
        let field = truncate_slack(&format!("*{label}*\n{value}"), SLACK_FIELD_TEXT_MAX);
        Some(json!({"type": "mrkdwn", "text": field}))
    })
    .collect();

    let mut section = Map::new();
    section.insert("type".into(), json!("section"));
    section.insert(
        "text".into(),
        json!({"type": "mrkdwn", "text": truncate_slack(&headline, SLACK_SECTION_TEXT_MAX)}),
    );
    if !fields.is_empty() {
        section.insert("fields".into(), Value::Array(fields));
    }

    let mut context = format!("agenthook · {}", slack_escape(event.event_type));
    if let Some(timestamp) = event.timestamp {
        context.push_str(" · ");
        context.push_str(&slack_escape(timestamp));
    }

    json!({
        "text": truncate_slack(&headline, SLACK_FALLBACK_TEXT_MAX),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": truncate_chars(&header, SLACK_HEADER_MAX),
                    "emoji": true,
                },
            },
            Value::Object(section),
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": truncate_slack(&context, SLACK_CONTEXT_TEXT_MAX)},
                ],
            },
        ],
    })
}

/// Slack treats `<...>` as links and mentions (`<!channel>`) and `&` as the start of an entity;
/// these three are the only characters its mrkdwn needs escaped.
fn slack_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            other => escaped.push(other),
        }
    }
    escaped
}

fn slack_preview(text: &str, max_chars: usize) -> String {
    slack_escape(&truncate_chars(text, max_chars))
}

/// An inline code span; a backtick inside would end it early, so it becomes a quote.
fn slack_code(text: &str) -> String {
    format!("`{}`", slack_escape(&text.replace('`', "'")))
}

fn slack_code_preview(text: &str) -> String {
    slack_code(&truncate_chars(text, VALUE_PREVIEW_CHARS))
}

/// Truncates escaped Slack text without leaving half an entity (`&am…`) at the cut.
fn truncate_slack(text: &str, max_chars: usize) -> String {
    truncate_with(text, max_chars, |kept| match kept.rfind('&') {
        Some(amp) if !kept[amp..].contains(';') => &kept[..amp],
        _ => kept,
    })
}

// ---------------------------------------------------------------------------------------------
// Discord
// ---------------------------------------------------------------------------------------------

/// `{"content": ..., "allowed_mentions": {"parse": []}}`; the empty `parse` list makes Discord
/// ignore `@everyone`, role and user mentions in any value we echo.
fn discord_message(event: &EventSummary<'_>) -> Value {
    let (noun, id) = event.subject();
    let subject = match id {
        Some(id) => format!("{noun} {}", discord_escape(id)),
        None => noun.to_owned(),
    };
    let headline = match event.kind {
        EventKind::Ready => format!("✅ **{subject} is ready**"),
        EventKind::Failed => format!(
            "❌ **{subject} failed:** {}",
            discord_escape(&truncate_chars(event.failure(), ERROR_PREVIEW_CHARS))
        ),
        EventKind::Test => match event.test_message {
            Some(message) => format!(
                "👋 **Test event from agenthook:** {}",
                discord_escape(&truncate_chars(message, VALUE_PREVIEW_CHARS))
            ),
            None => "👋 **Test event from agenthook**".to_owned(),
        },
        EventKind::Other => format!(
            "🔔 **agenthook event** {}",
            discord_code(&truncate_chars(event.event_type, VALUE_PREVIEW_CHARS))
        ),
    };

    let mut lines = vec![headline];
    let mut line = |label: &str, value: Option<String>| {
        if let Some(value) = value {
            lines.push(format!("**{label}:** {value}"));
        }
    };
    line("Job", event.job_id.map(discord_code_preview));
    line("Agent", event.agent_id.map(discord_code_preview));
    line(
        "Name",
        event
            .name
            .map(|v| discord_escape(&truncate_chars(v, VALUE_PREVIEW_CHARS))),
    );
    line("Model", event.model_url.map(discord_link));
    line("Error code", event.error_code.map(discord_code_preview));
    line(
        "System prompt",
        event
            .system_prompt
            .map(|v| discord_escape(&truncate_chars(v, PROMPT_PREVIEW_CHARS))),
    );
    line(
        "Metadata",
        event.metadata.as_deref().map(discord_code_preview),
    );

    json!({
        "content": truncate_chars(&lines.join("\n"), DISCORD_CONTENT_MAX),
        "allowed_mentions": {"parse": []},
    })
}

/// Backslash-escapes Discord markdown, so a name like `[click](https://evil)` stays text.
fn discord_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '<' | '#' | '[' | ']' | '(' | ')' | '-'
        ) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// An inline code span; Discord shows its content verbatim, so only backticks need handling.
fn discord_code(text: &str) -> String {
    format!("`{}`", text.replace('`', "'"))
}

fn discord_code_preview(text: &str) -> String {
    discord_code(&truncate_chars(text, VALUE_PREVIEW_CHARS))
}

/// A web URL in angle brackets (clickable, without a preview embed); anything else as text.
fn discord_link(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {
            format!("<{}>", truncate_chars(url.as_str(), VALUE_PREVIEW_CHARS))
        }
        _ => discord_escape(&truncate_chars(raw, VALUE_PREVIEW_CHARS)),
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation
// ---------------------------------------------------------------------------------------------

/// `text` if it has at most `max_chars` characters, else its first `max_chars - 1` characters
/// and an ellipsis. Counts characters, not bytes, and cuts only at character boundaries.
fn truncate_chars(text: &str, max_chars: usize) -> String {
    truncate_with(text, max_chars, |kept| kept)
}

/// Like [`truncate_chars`], letting `adjust` shorten the kept part further (never lengthen it).
fn truncate_with(text: &str, max_chars: usize, adjust: impl Fn(&str) -> &str) -> String {
    if text.chars().nth(max_chars).is_none() {
        return text.to_owned();
    }
    if max_chars == 0 {
        return String::new();
    }
    let keep_end = text
        .char_indices()
        .nth(max_chars - 1)
        .map_or(text.len(), |(index, _)| index);
    let mut truncated = adjust(&text[..keep_end]).to_owned();
    truncated.push(ELLIPSIS);
    truncated
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ready_payload() -> Value {
        json!({
            "type": "agent.ready",
            "timestamp": "2026-11-28T16:00:00Z",
            "data": {
                "job_id": "job_01JDX3M6Z7Q8R9S0T1V2W3X4Y5",
                "agent_id": "A91XMB7113",
                "status": "ready",
                "model_url": "https://models.bithuman.ai/A91XMB7113.imx",
                "name": "Ada",
                "image_url": "https://img.example/ada.png",
                "video_url": null,
                "system_prompt": "You are a friendly guide.",
                "error_code": null,
                "error_message": null,
                "metadata": {"order": 42},
                "created_at": "2026-11-28T15:50:00Z",
                "completed_at": "2026-11-28T16:00:00Z",
            }
        })
    }

    fn failed_payload(error_message: &str) -> Value {
        json!({
            "type": "agent.failed",
            "timestamp": "2026-11-28T16:00:00Z",
            "data": {
                "job_id": "job_01JDX3M6Z7Q8R9S0T1V2W3X4Y5",
                "agent_id": "A91XMB7113",
                "status": "failed",
                "model_url": null,
                "name": null,
                "image_url": null,
                "video_url": null,
                "system_prompt": null,
                "error_code": "GENERATION_FAILED",
                "error_message": error_message,
                "metadata": {},
                "created_at": "2026-11-28T15:50:00Z",
                "completed_at": "2026-11-28T16:00:00Z",
            }
        })
    }

    fn test_payload() -> Value {
        json!({
            "type": "webhook.test",
            "timestamp": "2026-11-28T16:00:00Z",
            "data": {"message": "This is a test event from agenthook."}
        })
    }

    fn rendered(format: Format, payload: &Value) -> Value {
        serde_json::from_slice(&render(format, payload)).expect("rendered bodies are JSON")
    }

    fn chars(value: &Value) -> usize {
        value.as_str().expect("a string").chars().count()
    }

    /// Asserts every Slack and Discord limit on a rendered message.
    fn assert_within_limits(payload: &Value) {
        let slack = rendered(Format::Slack, payload);
        assert!(chars(&slack["text"]) <= SLACK_FALLBACK_TEXT_MAX);
        let blocks = slack["blocks"].as_array().expect("blocks");
        assert!(chars(&blocks[0]["text"]["text"]) <= SLACK_HEADER_MAX);
        assert!(chars(&blocks[1]["text"]["text"]) <= SLACK_SECTION_TEXT_MAX);
        for field in blocks[1]["fields"].as_array().into_iter().flatten() {
            assert!(chars(&field["text"]) <= SLACK_FIELD_TEXT_MAX);
            assert!(chars(&field["text"]) >= 1);
        }
        assert!(blocks[1]["fields"].as_array().map_or(0, Vec::len) <= 10);
        assert!(chars(&blocks[2]["elements"][0]["text"]) <= SLACK_CONTEXT_TEXT_MAX);

        let discord = rendered(Format::Discord, payload);
        assert!(chars(&discord["content"]) <= DISCORD_CONTENT_MAX);
    }

    fn slack_section_text(slack: &Value) -> &str {
        slack["blocks"][1]["text"]["text"].as_str().expect("text")
    }

    fn slack_fields(slack: &Value) -> Vec<&str> {
        slack["blocks"][1]["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|field| field["text"].as_str())
            .collect()
    }

    #[test]
    fn standard_format_is_the_payload_serialised_compactly() {
        let payload = ready_payload();
        let body = render(Format::Standard, &payload);
        assert_eq!(body, payload.to_string().into_bytes());
        assert!(!body.contains(&b'\n'));
        let parsed: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(parsed, payload);
    }

    #[test]
    fn a_stored_payload_renders_the_same_bytes_as_its_value() {
        for payload in [ready_payload(), test_payload()] {
            let written = Payload::from(payload.clone());
            let stored = Payload::from_stored(written.json().as_bytes()).expect("UTF-8");
            for format in [Format::Standard, Format::Slack, Format::Discord] {
                assert_eq!(
                    render_payload(format, &stored),
                    render(format, &payload),
                    "{format:?}"
                );
            }
        }
    }

    #[test]
    fn slack_ready_message_names_the_agent_and_lists_its_details() {
        let slack = rendered(Format::Slack, &ready_payload());
        assert_eq!(
            slack["text"],
            ":white_check_mark: Agent *A91XMB7113* is ready"
        );
        assert_eq!(slack["blocks"][0]["type"], "header");
        assert_eq!(
            slack["blocks"][0]["text"]["text"],
            "Agent A91XMB7113 is ready"
        );
        assert_eq!(slack_section_text(&slack), slack["text"]);
        let fields = slack_fields(&slack);
        assert!(fields.contains(&"*Name*\nAda"), "{fields:?}");
        assert!(fields.contains(&"*Model URL*\nhttps://models.bithuman.ai/A91XMB7113.imx"));
        assert!(fields.contains(&"*Job ID*\n`job_01JDX3M6Z7Q8R9S0T1V2W3X4Y5`"));
        assert!(fields.contains(&"*Metadata*\n`{\"order\":42}`"));
        assert_eq!(
            slack["blocks"][2]["elements"][0]["text"],
            "agenthook · agent.ready · 2026-11-28T16:00:00Z"
        );
    }

    #[test]
    fn slack_failed_message_states_the_error() {
        let slack = rendered(
            Format::Slack,
            &failed_payload("Image could not be processed"),
        );
        assert_eq!(
            slack["text"],
            ":x: Agent *A91XMB7113* failed: Image could not be processed"
        );
        assert_eq!(
            slack["blocks"][0]["text"]["text"],
            "Agent A91XMB7113 failed"
        );
        let fields = slack_fields(&slack);
        assert!(fields.contains(&"*Error code*\n`GENERATION_FAILED`"));
        assert!(!fields.iter().any(|f| f.starts_with("*Name*")));
        assert!(!fields.iter().any(|f| f.starts_with("*Metadata*")));
    }

    #[test]
    fn failure_without_agent_or_message_names_the_job_and_the_code() {
        let mut payload = failed_payload("");
        payload["data"]["agent_id"] = Value::Null;
        let slack = rendered(Format::Slack, &payload);
        assert_eq!(
            slack["text"],
            ":x: Job *job_01JDX3M6Z7Q8R9S0T1V2W3X4Y5* failed: GENERATION_FAILED"
        );
        let discord = rendered(Format::Discord, &payload);
        assert!(discord["content"].as_str().expect("content").starts_with(
            "❌ **Job job\\_01JDX3M6Z7Q8R9S0T1V2W3X4Y5 failed:** GENERATION\\_FAILED"
        ));
    }

    #[test]
    fn slack_test_message_says_it_is_a_test() {
        let slack = rendered(Format::Slack, &test_payload());
        assert_eq!(
            slack["text"],
            ":wave: Test event from agenthook: This is a test event from agenthook."
        );
        assert_eq!(slack["blocks"][0]["text"]["text"], "agenthook test event");
        assert!(slack["blocks"][1].get("fields").is_none());
    }

    #[test]
    fn discord_ready_message_lists_the_details_without_pinging_anyone() {
        let discord = rendered(Format::Discord, &ready_payload());
        let content = discord["content"].as_str().expect("content");
        assert_eq!(
            content,
            "✅ **Agent A91XMB7113 is ready**\n\
             **Job:** `job_01JDX3M6Z7Q8R9S0T1V2W3X4Y5`\n\
             **Agent:** `A91XMB7113`\n\
             **Name:** Ada\n\
             **Model:** <https://models.bithuman.ai/A91XMB7113.imx>\n\
             **System prompt:** You are a friendly guide.\n\
             **Metadata:** `{\"order\":42}`"
        );
        assert_eq!(discord["allowed_mentions"], json!({"parse": []}));
    }

    #[test]
    fn discord_failed_and_test_messages() {
        let failed = rendered(
            Format::Discord,
            &failed_payload("Image could not be processed"),
        );
        let content = failed["content"].as_str().expect("content");
        assert!(
            content.starts_with("❌ **Agent A91XMB7113 failed:** Image could not be processed\n")
        );
        assert!(content.contains("**Error code:** `GENERATION_FAILED`"));

        let test = rendered(Format::Discord, &test_payload());
        assert_eq!(
            test["content"],
            "👋 **Test event from agenthook:** This is a test event from agenthook."
        );
    }

    #[test]
    fn very_long_error_messages_and_prompts_are_truncated_within_limits() {
        let long_error = "disk full; ".repeat(20_000);
        let mut payload = failed_payload(&long_error);
        payload["data"]["system_prompt"] = json!("Be helpful. ".repeat(50_000));
        payload["data"]["name"] = json!("N".repeat(10_000));
        payload["data"]["agent_id"] = json!("A".repeat(1_000));
        payload["data"]["metadata"] = json!({"note": "m".repeat(70_000)});
        assert_within_limits(&payload);

        let slack = rendered(Format::Slack, &payload);
        assert!(slack_section_text(&slack).ends_with(ELLIPSIS));
        assert!(slack["blocks"][0]["text"]["text"]
            .as_str()
            .expect("header")
            .ends_with(ELLIPSIS));
        let discord = rendered(Format::Discord, &payload);
        assert!(discord["content"]
            .as_str()
            .expect("content")
            .ends_with(ELLIPSIS));
    }

    #[test]
    fn multibyte_text_is_counted_in_characters_and_never_split() {
        let error = "é🦀ß漢字".repeat(5_000);
        let mut payload = failed_payload(&error);
        payload["data"]["system_prompt"] = json!("🦀".repeat(10_000));
        payload["data"]["name"] = json!("ü".repeat(3_000));
        assert_within_limits(&payload);
        for max in 0..12 {
            let cut = truncate_chars("é🦀ß漢字é🦀ß漢字", max);
            assert!(cut.chars().count() <= max);
        }
        assert_eq!(truncate_chars("é🦀ß", 3), "é🦀ß");
        assert_eq!(truncate_chars("é🦀ßx", 3), "é🦀…");
        assert_eq!(truncate_chars("abc", 0), "");
    }

    #[test]
    fn slack_escapes_mentions_and_links_from_user_values() {
        let mut payload = ready_payload();
        payload["data"]["name"] = json!("<!channel> & <https://evil.example|click>");
        let slack = rendered(Format::Slack, &payload);
        let body = slack.to_string();
        assert!(!body.contains("<!channel>"));
        assert!(!body.contains("<https://evil"));
        assert!(slack_fields(&slack)
            .contains(&"*Name*\n&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;"));
    }

    #[test]
    fn slack_truncation_never_leaves_half_an_entity() {
        let payload = failed_payload(&"&".repeat(10_000));
        let slack = rendered(Format::Slack, &payload);
        let text = slack_section_text(&slack);
        assert!(text.chars().count() <= SLACK_SECTION_TEXT_MAX);
        let after_prefix = text.split_once("failed: ").expect("prefix").1;
        let without_ellipsis = after_prefix.trim_end_matches(ELLIPSIS);
        assert!(without_ellipsis.split("&amp;").all(str::is_empty), "{text}");
    }

    #[test]
    fn discord_escapes_markdown_links_from_user_values() {
        let mut payload = ready_payload();
        payload["data"]["name"] = json!("[click](https://evil.example) **bold** @everyone");
        let discord = rendered(Format::Discord, &payload);
        let content = discord["content"].as_str().expect("content");
        assert!(content.contains(
            "**Name:** \\[click\\]\\(https://evil.example\\) \\*\\*bold\\*\\* @everyone"
        ));
        assert_eq!(discord["allowed_mentions"]["parse"], json!([]));
    }

    #[test]
    fn odd_payloads_still_render_valid_messages() {
        for payload in [
            Value::Null,
            json!([]),
            json!("agent.ready"),
            json!({"type": 5, "data": "x"}),
            json!({"type": "agent.paused", "data": {"job_id": 7}}),
        ] {
            assert_within_limits(&payload);
            let slack = rendered(Format::Slack, &payload);
            assert!(slack["text"].as_str().is_some_and(|t| !t.is_empty()));
            assert_eq!(rendered(Format::Standard, &payload), payload);
        }
    }

    proptest! {
        #[test]
        fn any_field_values_render_within_limits(
            error in ".{0,4000}",
            name in ".{0,300}",
            prompt in ".{0,3000}",
            agent_id in ".{0,200}",
            event_type in prop::sample::select(vec!["agent.ready", "agent.failed", "webhook.test", "other"]),
        ) {
            let payload = json!({
                "type": event_type,
                "timestamp": "2026-11-28T16:00:00Z",
                "data": {
                    "job_id": "job_1", "agent_id": agent_id, "name": name,
                    "system_prompt": prompt, "error_message": error, "message": error,
                    "model_url": name, "metadata": {"k": prompt},
                }
            });
            assert_within_limits(&payload);
        }
    }
}
