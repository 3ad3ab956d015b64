//! `agenthook demo`: the whole loop on one machine in about ten seconds. The simulator, the
//! service (temporary data directory) and a local receiver start on loopback; the service
//! registers its upstream push URL with the simulator; a job is submitted; the simulator pushes
//! `agent.ready` when the agent is done, the service reads its status at once, and the signed
//! `agent.ready` webhook arrives and is verified; then the curl commands to try next are
//! printed.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::app::Application;
use crate::cli::{DEV_KEY, DEV_TENANT};
use crate::clock;
use crate::config::{ApiKey, Secret, Settings};
use crate::delivery::signature::{self, SigningSecret};
use crate::sim::{self, SimConfig};

#[derive(Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

pub async fn run() -> Result<(), Error> {
    let data = tempfile::tempdir()?;
    step("starting the bitHuman simulator, the service and a local webhook receiver on 127.0.0.1");
    let simulator = sim::spawn(
        TcpListener::bind("127.0.0.1:0")?,
        SimConfig {
            time_to_ready: Duration::from_secs(4),
            ..SimConfig::default()
        },
    )?;
    let (tx, mut inbox) = mpsc::unbounded_channel::<Received>();
    let receiver_listener = TcpListener::bind("127.0.0.1:0")?;
    let receiver_addr = receiver_listener.local_addr()?;
    let tx = Arc::new(tx);
    let receiver = HttpServer::new(move || {
        let tx = tx.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let tx = tx.clone();
            async move {
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                let _ = tx.send(Received {
                    headers,
                    body: body.to_vec(),
                });
                HttpResponse::Ok().body("ok")
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(receiver_listener)?
    .run();
    let receiver_handle = receiver.handle();
    tokio::spawn(receiver);

    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new())?;
    settings.server.bind = "127.0.0.1:0".parse()?;
    settings.storage.path = data.path().to_path_buf();
    settings.upstream.base_url = simulator.base_url.parse()?;
    settings.upstream.api_secret = Secret::new(simulator.state.config().api_secret);
    settings.poller.first_poll_after = Duration::from_secs(1);
    settings.poller.interval = Duration::from_secs(1);
    settings.delivery.allow_private_networks = true;
    settings.auth.keys = vec![ApiKey {
        name: DEV_TENANT.into(),
        key: Secret::new(DEV_KEY),
    }];
    // bitHuman's own webhooks: the service registers its push URL with the simulator at start,
    // which then pushes `agent.ready` the moment the agent is done.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    settings.upstream.webhooks.public_url = format!("{base}/v1/upstream/webhooks");
    let app = Application::build_on(settings, clock::system(), listener).await?;
    let stop = app.stop_handle();
    let service = tokio::spawn(app.run());
    println!("  simulator  {}", simulator.base_url);
    println!("  agenthook  {base}");
    println!("  receiver   http://{receiver_addr}/webhook");
    println!("  upstream pushes to {base}/v1/upstream/webhooks (registered at start)");

    let http = reqwest::Client::new();
    let callback = format!("http://{receiver_addr}/webhook");
    let request = json!({
        "prompt": "You are a friendly museum guide.",
        "callback_url": callback,
        "metadata": {"order_id": "demo-42"}
    });
    step("submitting a generation job");
    println!("  POST {base}/v1/jobs\n  {request}");
    let res = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(DEV_KEY)
        .json(&request)
        .send()
        .await?;
    let status = res.status();
    let job: Value = res.json().await?;
    println!(
        "  -> {status} {}",
        compact(&job, &["id", "agent_id", "status"])
    );
    if !status.is_success() {
        return Err(format!("the job was not accepted: {job}").into());
    }

    step("waiting for the agent to be ready (the simulator takes about 4 s, then pushes agent.ready to agenthook, which reads the status at once; polling is the safety net)");
    let webhook = tokio::time::timeout(Duration::from_secs(60), inbox.recv())
        .await
        .map_err(|_| "no webhook arrived within 60 s")?
        .ok_or("the receiver stopped")?;
    let header = |name: &str| {
        webhook
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    println!("  webhook received:");
    for name in [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "user-agent",
    ] {
        println!("    {name}: {}", header(name));
    }
    let body: Value = serde_json::from_slice(&webhook.body)?;
    println!("{}", indent(&serde_json::to_string_pretty(&body)?, "    "));

    step("verifying the signature with the tenant's callback secret (GET /v1/callback-secret)");
    let secret: Value = http
        .get(format!("{base}/v1/callback-secret"))
        .bearer_auth(DEV_KEY)
        .send()
        .await?
        .json()
        .await?;
    let secret = SigningSecret::parse(secret["secret"].as_str().unwrap_or_default())?;
    signature::verify(
        &secret,
        &header("webhook-id"),
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        &webhook.body,
        chrono::Utc::now().timestamp(),
        signature::DEFAULT_TOLERANCE_SECS,
    )?;
    println!(
        "  signature valid (Standard Webhooks v1, HMAC-SHA256); event {} for agent {}",
        body["type"], body["data"]["agent_id"]
    );

    stop.stop().await;
    let _ = service.await;
    receiver_handle.stop(false).await;
    drop(simulator);
    print_next_steps();
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn compact(v: &Value, fields: &[&str]) -> String {
    let picked: serde_json::Map<String, Value> = fields
        .iter()
        .filter_map(|f| v.get(*f).map(|x| ((*f).to_owned(), x.clone())))
        .collect();
    Value::Object(picked).to_string()
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_next_steps() {
    println!(
        r#"
==> it works. Next, run the service against the simulator and try it by hand:

  cargo run --release -- serve --simulator

  # submit a job (add "callback_url": "https://..." to be called back, or use a subscription)
  curl -s -X POST http://127.0.0.1:8080/v1/jobs \
    -H 'Authorization: Bearer {DEV_KEY}' -H 'content-type: application/json' \
    -d '{{"prompt": "You are a friendly museum guide.", "metadata": {{"order_id": 42}}}}'

  # watch it (agenthook polls upstream for you)
  curl -s http://127.0.0.1:8080/v1/jobs -H 'Authorization: Bearer {DEV_KEY}'

  # subscribe a receiver to every agent.ready / agent.failed event of your tenant
  curl -s -X POST http://127.0.0.1:8080/v1/subscriptions \
    -H 'Authorization: Bearer {DEV_KEY}' -H 'content-type: application/json' \
    -d '{{"url": "https://example.com/hooks/agents", "event_types": ["agent.ready", "agent.failed"]}}'

  # the secret that signs job callbacks, and the delivery log
  curl -s http://127.0.0.1:8080/v1/callback-secret -H 'Authorization: Bearer {DEV_KEY}'
  curl -s http://127.0.0.1:8080/v1/deliveries -H 'Authorization: Bearer {DEV_KEY}'

  # verify a webhook you received (body on stdin)
  agenthook verify --secret whsec_... --id msg_... --timestamp 1700000000 --signature 'v1,...' < body.json
"#
    );
}
