//! The node's HTTP API (axum): the read-only status API (`status.rs`), the admin API behind a
//! bearer token (`admin.rs`), the live wallboard pushed by SSE (`wallboard.rs`), Prometheus
//! metrics (`metrics.rs`) and the OpenAPI document of it all (`openapi.json`, checked against
//! [`routes`] by a test).

mod admin;
mod metrics;
mod spy;
mod status;
mod wallboard;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{delete, get, post, put};
use axum::Router;
use statebus::Bus;

/// Reads the queue configuration again (the binary's config file) for a reload.
pub type Reloader =
    Arc<dyn Fn() -> anyhow::Result<(acd::EngineConfig, HashMap<String, String>)> + Send + Sync>;

/// What the API reads from and acts on.
#[derive(Clone)]
pub struct Sources {
    pub bus: Arc<dyn Bus>,
    /// The XMPP bus (bus health in /metrics), if that is the backend.
    pub xmpp: Option<statebus::XmppBus>,
    pub gateway: Option<Arc<gateway::server::Gateway>>,
    pub acd: Option<Arc<acd::node::AcdNode>>,
    /// Bearer token of `/admin/…` (None: the admin API answers 403).
    pub token: Option<Arc<str>>,
    /// Queue reload.
    pub reload: Option<Reloader>,
    /// The device database (URL, realm) for `/admin/devices`.
    pub devices: Option<(String, String)>,
    /// This node's site (`[node] site`): the site of devices created through the API unless
    /// they name one.
    pub site: String,
    /// Counters fed by the gateway's events.
    pub metrics: Arc<metrics::Totals>,
}

impl Sources {
    /// Sources with no admin token, reloader or device database.
    pub fn new(
        bus: Arc<dyn Bus>,
        gateway: Option<Arc<gateway::server::Gateway>>,
        acd: Option<Arc<acd::node::AcdNode>>,
    ) -> Sources {
        Sources {
            bus,
            xmpp: None,
            gateway,
            acd,
            token: None,
            reload: None,
            devices: None,
            site: String::new(),
            metrics: Arc::default(),
        }
    }
}

/// Every route: (method, path as in OpenAPI, handler). One line per route, so a new one merges
/// as one line.
pub fn routes() -> Vec<(
    &'static str,
    &'static str,
    axum::routing::MethodRouter<Sources>,
)> {
    vec![
        ("get", "/devices", get(status::devices)),
        ("get", "/calls", get(status::calls)),
        ("get", "/queues", get(status::queues)),
        ("get", "/security/bans", get(status::security_bans)),
        ("get", "/openapi.json", get(openapi)),
        ("get", "/metrics", get(metrics::metrics)),
        ("get", "/wallboard", get(wallboard::page)),
        ("get", "/wallboard/events", get(wallboard::events)),
        ("get", "/admin/queues", get(admin::queues)),
        ("get", "/admin/queues/{queue}/waiting", get(admin::waiting)),
        ("get", "/admin/calls", get(admin::calls)),
        ("post", "/admin/pause", post(admin::pause)),
        ("post", "/admin/unpause", post(admin::unpause)),
        ("post", "/admin/members", post(admin::add_member)),
        ("post", "/admin/members/remove", post(admin::remove_member)),
        ("post", "/admin/penalty", post(admin::penalty)),
        ("post", "/admin/reload", post(admin::reload)),
        ("get", "/admin/devices", get(admin::devices)),
        ("post", "/admin/devices", post(admin::put_device)),
        ("put", "/admin/devices", put(admin::put_device)),
        (
            "delete",
            "/admin/devices/{user}",
            delete(admin::delete_device),
        ),
        ("post", "/admin/devices/import", post(admin::import_devices)),
        ("post", "/admin/calls/{call}/spy", post(spy::spy)),
    ]
}

/// The router over [`routes`].
pub fn router(sources: Sources) -> Router {
    let mut r = Router::new();
    for (_, path, handler) in routes() {
        r = r.route(path, handler);
    }
    r.with_state(sources)
}

/// The OpenAPI 3 document, kept by hand next to the routes.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// Serves the API on `listen` until the task is dropped.
pub async fn serve(listen: SocketAddr, sources: Sources) -> anyhow::Result<()> {
    if let Some(gw) = &sources.gateway {
        tokio::spawn(metrics::count_gateway_events(
            gw.events.subscribe(),
            sources.metrics.clone(),
        ));
    }
    let app = router(sources);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("http ready {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-kept OpenAPI document lists exactly the router's routes and methods.
    #[test]
    fn openapi_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for m in ops.as_object().expect("operations").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                    documented.push((m.clone(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = routes()
            .into_iter()
            .map(|(m, p, _)| (m.to_owned(), p.to_owned()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }
}
