//! Webhook receivers for the benches that run the real service: one actix-web server per
//! loopback address, answering 204 (or 500 to `/fail/...` while [`Received::failing`] is set),
//! keeping every `webhook-id` with how often it came and its first arrival.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

#[derive(Default)]
pub struct Received {
    /// While set, requests to `/fail/...` are answered 500.
    pub failing: AtomicBool,
    pub count: AtomicUsize,
    /// Every `webhook-id` with the number of times it came and its first arrival.
    pub ids: Mutex<HashMap<String, (u32, Instant)>>,
    /// Arrivals per 100 ms since `origin`, once an origin is set.
    pub timeline: Mutex<Vec<u32>>,
    pub origin: Mutex<Option<Instant>>,
    pub last: Mutex<Option<Instant>>,
}

impl Received {
    /// Forget everything received (the `failing` switch stays).
    pub fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.ids.lock().unwrap().clear();
        self.timeline.lock().unwrap().clear();
        *self.last.lock().unwrap() = None;
    }

    /// `webhook-id`s that came more than once.
    pub fn duplicates(&self) -> usize {
        self.ids
            .lock()
            .unwrap()
            .values()
            .filter(|(n, _)| *n > 1)
            .count()
    }

    pub fn distinct(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    /// When `id` first came.
    pub fn arrival(&self, id: &str) -> Option<Instant> {
        self.ids.lock().unwrap().get(id).map(|(_, at)| *at)
    }
}

async fn receive(req: HttpRequest, _body: web::Bytes, rx: web::Data<Received>) -> HttpResponse {
    let now = Instant::now();
    if let Some(id) = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
    {
        let mut ids = rx.ids.lock().unwrap();
        let entry = ids.entry(id.to_owned()).or_insert((0, now));
        entry.0 += 1;
    }
    if let Some(origin) = *rx.origin.lock().unwrap() {
        let slot = now.saturating_duration_since(origin).as_millis() as usize / 100;
        let mut timeline = rx.timeline.lock().unwrap();
        if timeline.len() <= slot {
            timeline.resize(slot + 1, 0);
        }
        timeline[slot] += 1;
    }
    *rx.last.lock().unwrap() = Some(now);
    rx.count.fetch_add(1, Ordering::SeqCst);
    if rx.failing.load(Ordering::SeqCst) && req.path().starts_with("/fail/") {
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::NoContent().finish()
}

/// A receiver on each of `addrs`, on a thread of its own (one worker per address); returns
/// the addresses bound, once they are.
pub fn spawn(addrs: Vec<SocketAddr>, rx: Arc<Received>) -> Vec<SocketAddr> {
    let (tx, bound) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("receivers".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let data = web::Data::from(rx);
                let mut servers = Vec::new();
                let mut addresses = Vec::new();
                for addr in addrs {
                    let data = data.clone();
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .default_service(web::to(receive))
                    })
                    .workers(1)
                    .backlog(1024)
                    .bind(addr)
                    .expect("bind a receiver");
                    addresses.extend(server.addrs());
                    servers.push(server.run());
                }
                tx.send(addresses).unwrap();
                futures_util::future::join_all(servers).await;
            })
        })
        .expect("receiver thread");
    bound.recv().expect("receivers bound")
}
