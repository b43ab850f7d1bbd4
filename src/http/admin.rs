//! The admin API (`/admin/…`, JSON, `Authorization: Bearer <token>`): pause/unpause with a
//! reason, members added and removed (agents logged in and out), penalties, the floor (queues
//! with their waiting callers and agents), live calls, queue reload, and devices (create or
//! change, delete, bulk import from CSV). Errors are `{"error": "…"}` with 400 (bad input),
//! 401 (no or wrong token), 403 (no token configured), 404 (unknown queue or member, no ACD),
//! 409 (already a member, static member).

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Sources;
use acd::node::{AdminOp, AdminReply, Floor};

/// An error answer.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Proof that the request carried the admin token.
pub(super) struct Admin;

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<Sources> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Sources) -> Result<Self, Self::Rejection> {
        let Some(token) = &s.token else {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "the admin API is off: set [http] token or token_file".into(),
            ));
        };
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if same(g.as_bytes(), token.as_bytes()) => Ok(Admin),
            _ => Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            )),
        }
    }
}

fn node(s: &Sources) -> Result<&acd::node::AcdNode, ApiError> {
    s.acd
        .as_deref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no ACD node in this process".into()))
}

async fn run(s: &Sources, op: AdminOp) -> Result<AdminReply, ApiError> {
    use acd::EngineError as E;
    match node(s)?.admin(op).await {
        None => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the ACD node stopped".into(),
        )),
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) => {
            let code = match e {
                E::UnknownQueue(_) | E::NotMember { .. } => StatusCode::NOT_FOUND,
                E::AlreadyMember { .. } | E::NotDynamic { .. } => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(ApiError(code, e.to_string()))
        }
    }
}

async fn floor(s: &Sources) -> Result<Floor, ApiError> {
    node(s)?.floor().await.ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the ACD node stopped".into(),
        )
    })
}

fn secs(d: std::time::Duration) -> u64 {
    d.as_secs()
}

/// The floor as JSON (admin API, wallboard, CLI).
pub(super) fn floor_json(f: &Floor) -> Value {
    json!({
        "queues": f.queues.iter().map(|q| {
            let longest = q.waiting.iter().map(|c| c.wait).max().unwrap_or_default();
            json!({
                "queue": q.name,
                "strategy": q.strategy,
                "weight": q.weight,
                "maxlen": q.maxlen,
                "servicelevel_secs": q.servicelevel,
                "service_level_pct": q.service_level_pct(),
                "joined": q.stats.joined,
                "answered": q.stats.answered,
                "abandoned": q.stats.abandoned,
                "timed_out": q.stats.timed_out,
                "completed": q.stats.completed,
                "holdtime_weighted_secs": q.stats.holdtime_weighted_secs,
                "average_talk_secs": q.stats.total_talktime.as_secs()
                    .checked_div(q.stats.completed).unwrap_or(0),
                "longest_wait_secs": secs(longest),
                "waiting": q.waiting.iter().map(|c| json!({
                    "caller": c.caller,
                    "position": c.position,
                    "original_position": c.original_position,
                    "priority": c.priority,
                    "wait_secs": secs(c.wait),
                    "ringing": c.ringing,
                })).collect::<Vec<_>>(),
                "agents": q.agents.iter().map(|a| json!({
                    "interface": a.interface,
                    "name": a.name,
                    "state": a.state.as_wire(),
                    "state_secs": secs(a.state_for),
                    "paused": a.paused.is_some(),
                    "pause_reason": a.paused.as_ref().map(|p| p.0.clone()),
                    "paused_secs": a.paused.as_ref().map(|p| secs(p.1)),
                    "ringing": a.ringing,
                    "wrapup": a.wrapup,
                    "available": a.available,
                    "penalty": a.penalty,
                    "dynamic": a.dynamic,
                    "calls": a.calls,
                    "last_call_secs": a.last_call_ago.map(secs),
                })).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "calls": f.calls.iter().map(|c| json!({
            "caller": c.caller,
            "from": c.from,
            "queue": c.queue,
            "state": c.state.as_str(),
            "agent": c.agent,
            "duration_secs": secs(c.duration),
        })).collect::<Vec<_>>(),
    })
}

pub(super) async fn queues(_: Admin, State(s): State<Sources>) -> Result<Json<Value>, ApiError> {
    Ok(Json(floor_json(&floor(&s).await?)))
}

pub(super) async fn waiting(
    _: Admin,
    State(s): State<Sources>,
    Path(queue): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let f = floor(&s).await?;
    let q = f
        .queues
        .iter()
        .find(|q| q.name.eq_ignore_ascii_case(&queue))
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown queue {queue:?}")))?;
    let one = Floor {
        queues: vec![q.clone()],
        calls: Vec::new(),
    };
    Ok(Json(floor_json(&one)["queues"][0]["waiting"].clone()))
}

pub(super) async fn calls(_: Admin, State(s): State<Sources>) -> Result<Json<Value>, ApiError> {
    let acd = match &s.acd {
        Some(_) => floor_json(&floor(&s).await?)["calls"].clone(),
        None => json!([]),
    };
    let gw = match &s.gateway {
        Some(g) => json!(g
            .calls()
            .iter()
            .map(|c| json!({
                "call": c.call,
                "caller": c.parties.caller,
                "dialled": c.parties.dialled,
                "caller_device": c.parties.caller_device,
                "callee_device": c.parties.callee_device,
                "a": super::status::leg(&c.a),
                "b": super::status::leg(&c.b),
            }))
            .collect::<Vec<_>>()),
        None => json!([]),
    };
    Ok(Json(json!({ "acd": acd, "gateway": gw })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PauseBody {
    interface: String,
    queue: Option<String>,
    #[serde(default)]
    reason: String,
}

/// Bounds on what a request may carry (queue_log fields, names).
const MAX_FIELD: usize = 128;

fn check(what: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > MAX_FIELD || v.contains(['|', '\n', '\r']) {
        return Err(bad(format!(
            "{what}: at most {MAX_FIELD} bytes, no '|' or line breaks"
        )));
    }
    Ok(())
}

fn check_member(interface: &str, queue: Option<&str>) -> Result<(), ApiError> {
    if interface.trim().is_empty() {
        return Err(bad("interface: empty"));
    }
    check("interface", interface)?;
    if let Some(q) = queue {
        check("queue", q)?;
    }
    Ok(())
}

pub(super) async fn pause(
    _: Admin,
    State(s): State<Sources>,
    Json(b): Json<PauseBody>,
) -> Result<Json<Value>, ApiError> {
    check_member(&b.interface, b.queue.as_deref())?;
    check("reason", &b.reason)?;
    run(
        &s,
        AdminOp::Pause {
            interface: b.interface,
            queue: b.queue,
            reason: b.reason,
        },
    )
    .await?;
    Ok(Json(json!({ "ok": true })))
}

pub(super) async fn unpause(
    _: Admin,
    State(s): State<Sources>,
    Json(b): Json<PauseBody>,
) -> Result<Json<Value>, ApiError> {
    check_member(&b.interface, b.queue.as_deref())?;
    check("reason", &b.reason)?;
    run(
        &s,
        AdminOp::Unpause {
            interface: b.interface,
            queue: b.queue,
            reason: b.reason,
        },
    )
    .await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberBody {
    queue: String,
    interface: String,
    #[serde(default)]
    penalty: i32,
    name: Option<String>,
    state_interface: Option<String>,
    #[serde(default)]
    paused: bool,
}

pub(super) async fn add_member(
    _: Admin,
    State(s): State<Sources>,
    Json(b): Json<MemberBody>,
) -> Result<Json<Value>, ApiError> {
    check_member(&b.interface, Some(&b.queue))?;
    for v in [&b.name, &b.state_interface].into_iter().flatten() {
        check("name", v)?;
    }
    let mut m = acd::MemberConfig::new(b.interface);
    m.penalty = b.penalty;
    m.name = b.name;
    m.state_interface = b.state_interface;
    m.paused = b.paused;
    run(
        &s,
        AdminOp::AddMember {
            queue: b.queue,
            member: m,
        },
    )
    .await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveBody {
    queue: String,
    interface: String,
}

pub(super) async fn remove_member(
    _: Admin,
    State(s): State<Sources>,
    Json(b): Json<RemoveBody>,
) -> Result<Json<Value>, ApiError> {
    check_member(&b.interface, Some(&b.queue))?;
    run(
        &s,
        AdminOp::RemoveMember {
            queue: b.queue,
            interface: b.interface,
        },
    )
    .await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PenaltyBody {
    interface: String,
    queue: Option<String>,
    penalty: i32,
}

pub(super) async fn penalty(
    _: Admin,
    State(s): State<Sources>,
    Json(b): Json<PenaltyBody>,
) -> Result<Json<Value>, ApiError> {
    check_member(&b.interface, b.queue.as_deref())?;
    run(
        &s,
        AdminOp::Penalty {
            interface: b.interface,
            queue: b.queue,
            penalty: b.penalty,
        },
    )
    .await?;
    Ok(Json(json!({ "ok": true })))
}

pub(super) async fn reload(_: Admin, State(s): State<Sources>) -> Result<Json<Value>, ApiError> {
    let reader = s.reload.clone().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "no queue configuration to reload".into(),
        )
    })?;
    let (engine, numbers) = reader().map_err(|e| bad(format!("{e:#}")))?;
    // In site mode the gateway routes the queue numbers to the ACD as the trunk "acd": numbers
    // new in the file are routed from now on.
    let routed: Vec<String> = numbers.keys().cloned().collect();
    let reply = run(&s, AdminOp::Reload { engine, numbers }).await?;
    if let Some(gw) = &s.gateway {
        gw.set_trunk_prefixes(crate::SITE_ACD_TRUNK, routed);
    }
    match reply {
        AdminReply::Reloaded(r) => Ok(Json(json!({
            "added": r.added_queues,
            "updated": r.updated_queues,
            "kept": r.kept_queues,
        }))),
        AdminReply::Done => Ok(Json(json!({}))),
    }
}

async fn store(s: &Sources) -> Result<(gateway::devices::DeviceStore, String), ApiError> {
    let (url, realm) = s.devices.clone().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "no device database in this process".into(),
        )
    })?;
    let st = gateway::devices::DeviceStore::open(&url)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((st, realm))
}

fn db_err(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

pub(super) async fn devices(_: Admin, State(s): State<Sources>) -> Result<Json<Value>, ApiError> {
    let (st, _) = store(&s).await?;
    let all = st.load_all().await.map_err(db_err)?;
    st.close().await;
    Ok(Json(json!(all
        .iter()
        .map(|d| json!({
            "user": d.username,
            "realm": d.realm,
            "extension": d.extension,
            "name": d.display_name,
            "call_limit": d.call_limit,
            "digest": d.digest_algorithms,
            "mailbox": d.mailbox_key(),
            "mwi": d.mwi,
            "site": d.site,
            "supervisor": d.supervisor,
        }))
        .collect::<Vec<_>>())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceBody {
    user: String,
    password: String,
    extension: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    digest: String,
    /// The mailbox whose lamp the phone shows (`1001@default`); empty: `<user>@default`.
    #[serde(default)]
    mailbox: String,
    /// `subscribe` (default), `unsolicited` or `off`.
    #[serde(default)]
    mwi: String,
    /// The site whose gateway publishes the device's state (a table shared by sites); default:
    /// this node's `[node] site`; `""`: every gateway's.
    site: Option<String>,
    /// May listen to, whisper to and barge into calls (issue 13).
    #[serde(default)]
    supervisor: bool,
}

/// A CSV `supervisor` field: empty, `0`, `false`, `no` or `1`, `true`, `yes`.
fn csv_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" => Some(false),
        "1" | "true" | "yes" => Some(true),
        _ => None,
    }
}

fn device_record(
    b: &DeviceBody,
    realm: &str,
    node_site: &str,
) -> Result<gateway::devices::DeviceRecord, String> {
    let user_ok = !b.user.is_empty()
        && b.user.len() <= 64
        && b.user
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.+".contains(&c));
    if !user_ok {
        return Err(format!(
            "user {:?}: 1 to 64 of letters, digits, - _ . +",
            b.user
        ));
    }
    if b.password.is_empty() || b.password.len() > 128 {
        return Err("password: 1 to 128 bytes".into());
    }
    if let Some(e) = &b.extension {
        if e.is_empty() || e.len() > 32 || !e.bytes().all(|c| c.is_ascii_digit() || c == b'*') {
            return Err(format!("extension {e:?}: digits"));
        }
    }
    if b.name.len() > MAX_FIELD {
        return Err(format!("name: at most {MAX_FIELD} bytes"));
    }
    for t in b.digest.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if gateway::registrar::digest::Algorithm::from_token(t).is_none() {
            return Err(format!("digest: unknown algorithm {t:?} (SHA-256, MD5)"));
        }
    }
    if b.mailbox.len() > MAX_FIELD
        || b.mailbox
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "mailbox {:?}: no white space, at most {MAX_FIELD} bytes",
            b.mailbox
        ));
    }
    let site = b.site.as_deref().unwrap_or(node_site);
    if site.len() > MAX_FIELD || site.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "site {site:?}: no white space, at most {MAX_FIELD} bytes"
        ));
    }
    let Some(mode) = gateway::devices::MwiMode::parse(&b.mwi) else {
        return Err(format!("mwi {:?}: subscribe, unsolicited or off", b.mwi));
    };
    let mut d = gateway::devices::DeviceRecord::with_password(&b.user, realm, &b.password);
    d.mailbox = b.mailbox.clone();
    d.mwi = match mode {
        gateway::devices::MwiMode::Subscribe => "subscribe",
        gateway::devices::MwiMode::Unsolicited => "unsolicited",
        gateway::devices::MwiMode::Off => "off",
    }
    .into();
    d.extension = b.extension.clone();
    d.display_name = b.name.clone();
    d.digest_algorithms = b.digest.clone();
    d.site = site.to_owned();
    d.supervisor = b.supervisor;
    Ok(d)
}

pub(super) async fn put_device(
    _: Admin,
    State(s): State<Sources>,
    Json(b): Json<DeviceBody>,
) -> Result<Json<Value>, ApiError> {
    let (st, realm) = store(&s).await?;
    let d = device_record(&b, &realm, &s.site).map_err(bad)?;
    st.upsert(&d).await.map_err(db_err)?;
    st.close().await;
    Ok(Json(json!({ "ok": true, "user": b.user })))
}

pub(super) async fn delete_device(
    _: Admin,
    State(s): State<Sources>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (st, _) = store(&s).await?;
    let gone = st.delete(&user).await.map_err(db_err)?;
    st.close().await;
    if !gone {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no device {user:?}"),
        ));
    }
    Ok(Json(json!({ "ok": true })))
}

/// At most this many devices per import.
const MAX_IMPORT: usize = 10_000;

/// `text/csv` with a header line naming the columns: `user,password[,extension][,name]
/// [,digest][,mailbox][,mwi][,site][,supervisor]`, in any order (without `site`: this node's
/// site; without `supervisor`: not a supervisor). Every line is checked before anything is written; an error names
/// its line.
pub(super) async fn import_devices(
    _: Admin,
    State(s): State<Sources>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let mut lines = body
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(bad("empty CSV: a header line (user,password,…) is needed"));
    };
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let col = |n: &str| cols.iter().position(|c| c == n);
    let (Some(u), Some(p)) = (col("user"), col("password")) else {
        return Err(bad(
            "CSV line 1: the header needs user and password columns",
        ));
    };
    for c in &cols {
        if ![
            "user",
            "password",
            "extension",
            "name",
            "digest",
            "mailbox",
            "mwi",
            "site",
            "supervisor",
        ]
        .contains(&c.as_str())
        {
            return Err(bad(format!("CSV line 1: unknown column {c:?}")));
        }
    }
    let (st, realm) = store(&s).await?;
    let mut records = Vec::new();
    for (i, l) in lines {
        if records.len() >= MAX_IMPORT {
            return Err(bad(format!("more than {MAX_IMPORT} devices")));
        }
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        if f.len() != cols.len() {
            return Err(bad(format!(
                "CSV line {}: {} fields, the header has {}",
                i + 1,
                f.len(),
                cols.len()
            )));
        }
        let get = |c: Option<usize>| c.map(|c| f[c].to_owned()).unwrap_or_default();
        let ext = get(col("extension"));
        let b = DeviceBody {
            user: get(Some(u)),
            password: get(Some(p)),
            extension: (!ext.is_empty()).then_some(ext),
            name: get(col("name")),
            digest: get(col("digest")),
            mailbox: get(col("mailbox")),
            mwi: get(col("mwi")),
            // A CSV without a site column: this node's site (as the JSON API).
            site: col("site").map(|c| f[c].to_owned()),
            supervisor: csv_bool(&get(col("supervisor"))).ok_or_else(|| {
                bad(format!(
                    "CSV line {}: supervisor {:?}: true/false, yes/no, 1/0 or empty",
                    i + 1,
                    get(col("supervisor"))
                ))
            })?,
        };
        records.push(
            device_record(&b, &realm, &s.site)
                .map_err(|e| bad(format!("CSV line {}: {e}", i + 1)))?,
        );
    }
    for d in &records {
        st.upsert(d).await.map_err(db_err)?;
    }
    st.close().await;
    Ok(Json(json!({ "ok": true, "imported": records.len() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: Value) -> DeviceBody {
        serde_json::from_value(json).expect("device body")
    }

    /// A device made through the API belongs to this node's site unless it names one, and
    /// carries the supervisor flag.
    #[test]
    fn device_site_defaults_to_the_nodes_and_supervisor_is_kept() {
        let d = device_record(
            &body(json!({"user": "2001", "password": "pw"})),
            "r",
            "paris",
        )
        .expect("ok");
        assert_eq!((d.site.as_str(), d.supervisor), ("paris", false));
        let d = device_record(
            &body(json!({"user": "2001", "password": "pw", "site": "lyon", "supervisor": true})),
            "r",
            "paris",
        )
        .expect("ok");
        assert_eq!((d.site.as_str(), d.supervisor), ("lyon", true));
        let d = device_record(
            &body(json!({"user": "2001", "password": "pw", "site": ""})),
            "r",
            "paris",
        )
        .expect("ok");
        assert_eq!(d.site, "", "an explicit empty site: every gateway's device");
        let e = device_record(
            &body(json!({"user": "2001", "password": "pw", "site": "a b"})),
            "r",
            "paris",
        )
        .expect_err("space");
        assert!(e.contains("site \"a b\""), "{e}");
    }

    #[test]
    fn csv_supervisor_fields() {
        for (v, want) in [
            ("", Some(false)),
            ("0", Some(false)),
            ("No", Some(false)),
            ("1", Some(true)),
            ("TRUE", Some(true)),
            ("yes", Some(true)),
            ("maybe", None),
        ] {
            assert_eq!(csv_bool(v), want, "{v:?}");
        }
    }
}
