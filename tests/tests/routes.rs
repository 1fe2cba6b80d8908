//! Every route of the API, read from the router itself.
//!
//! Who may call what: given the API's route
//! table (every route declares who may call it: `stepd_api::route_table`),
//! when each route is called on a running server with no token, a
//! malformed header, a lowercase `bearer` scheme, a worker token and an
//! operator token, then each answer is the one its declaration promises;
//! and the OpenAPI document names exactly the same routes with the same
//! security.
//!
//! What any caller may send: given the same route table, when each route
//! gets malformed paths, queries, headers and bodies (a fixed-seed proptest
//! campaign; `STEPD_FUZZ_CASES` runs longer), then every answer comes
//! within seconds, is never a 5xx, and every refusal is a JSON error.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{json, Value};
use stepd_api::{route_table, Access, Route, Scope};
use stepd_tests::cluster::{task, write_step, Cluster, Mode, OPERATOR_TOKEN, WORKER_TOKEN};

/// The credentials every route is tried with.
#[derive(Debug, Clone, Copy)]
enum Credential {
    None,
    Malformed,
    LowercaseScheme,
    Worker,
    Operator,
}

impl Credential {
    const ALL: [Credential; 5] = [
        Credential::None,
        Credential::Malformed,
        Credential::LowercaseScheme,
        Credential::Worker,
        Credential::Operator,
    ];

    /// The `Authorization` header, if any; the lowercase scheme carries the
    /// token of the scope the route needs.
    fn header(self, access: Access) -> Option<String> {
        match self {
            Credential::None => None,
            Credential::Malformed => Some(format!("Token {OPERATOR_TOKEN}")),
            Credential::LowercaseScheme => Some(match access {
                Access::Needs(Scope::Worker) => format!("bearer {WORKER_TOKEN}"),
                _ => format!("bearer {OPERATOR_TOKEN}"),
            }),
            Credential::Worker => Some(format!("Bearer {WORKER_TOKEN}")),
            Credential::Operator => Some(format!("Bearer {OPERATOR_TOKEN}")),
        }
    }
}

/// What the declaration promises: `Some(status)` for a refusal, `None`
/// when the caller gets past authentication (the handler's answer then
/// depends on the request, never 401 or 403).
fn expected(access: Access, credential: Credential) -> Option<u16> {
    match (access, credential) {
        (Access::Public, _) => None,
        (Access::Needs(_), Credential::None | Credential::Malformed) => Some(401),
        (Access::Needs(_), Credential::LowercaseScheme) => None,
        (Access::Needs(Scope::Operator), Credential::Worker) => Some(403),
        (Access::Needs(Scope::Worker), Credential::Operator) => Some(403),
        (Access::Needs(_), Credential::Worker | Credential::Operator) => None,
    }
}

/// The route's path with its parameters filled in.
fn concrete(route: &Route, job: &str) -> String {
    route.path.replace("{id}", job).replace("{*path}", "state.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_credential_as_it_declares() {
    let cluster = Cluster::start(Mode::Embedded, 0, 0).await;
    let job = cluster
        .submit(&task(1, vec![write_step("one", "a.txt", "a", 0)], json!({})))
        .await;
    let http = reqwest::Client::new();
    let routes = route_table();
    assert!(routes.len() >= 13, "{routes:?}");
    let mut checked = 0;
    for route in &routes {
        for credential in Credential::ALL {
            let mut request = http
                .request(
                    route.method.clone(),
                    format!("{}{}", cluster.url, concrete(route, &job)),
                )
                .timeout(Duration::from_secs(10));
            if let Some(header) = credential.header(route.access) {
                request = request.header("authorization", header);
            }
            if route.method == reqwest::Method::POST {
                request = request.json(&json!({}));
            }
            let response = request.send().await.expect("the server answers");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            let what = format!("{} {} with {credential:?}", route.method, route.path);
            // The router's own 404 names no job or file; a handler's does.
            assert!(
                !(status == 404 && body.contains("no such endpoint")),
                "{what}: the route is not served: {body}"
            );
            assert_ne!(status, 405, "{what}: the method is not served: {body}");
            assert!(status < 500, "{what}: {status} {body}");
            match expected(route.access, credential) {
                Some(refused) => {
                    assert_eq!(status, refused, "{what}: {body}");
                    let error: Value = serde_json::from_str(&body).expect("a JSON error");
                    assert!(!error["message"].as_str().unwrap_or_default().is_empty(), "{what}");
                }
                None => assert!(status != 401 && status != 403, "{what}: {status} {body}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * Credential::ALL.len());
    cluster.shutdown().await;
}

#[test]
fn the_openapi_document_names_exactly_the_routes_the_router_serves() {
    let document = stepd_api::openapi_document();
    let paths = document["paths"].as_object().expect("paths");
    let global = document.get("security");
    let documented: BTreeSet<(String, String, String)> = paths
        .iter()
        .flat_map(|(path, operations)| {
            operations
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(method, operation)| {
                    // An operation's own requirement, else the document's;
                    // `[{}]` (or `[]`) means no token.
                    let requirement = operation.get("security").or(global).and_then(Value::as_array);
                    let schemes: Vec<String> = requirement
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s.as_object().into_iter().flat_map(|o| o.keys().cloned()))
                        .collect();
                    let security = match requirement {
                        None => "undeclared".to_owned(),
                        Some(_) if schemes.is_empty() => "public".to_owned(),
                        Some(_) => schemes.join("+"),
                    };
                    (path.clone(), method.to_uppercase(), security)
                })
        })
        .collect();
    let served: BTreeSet<(String, String, String)> = route_table()
        .iter()
        .map(|route| {
            let security = match route.access {
                Access::Public => "public",
                Access::Needs(Scope::Operator) => "operator",
                Access::Needs(Scope::Worker) => "worker",
            };
            (
                route.path.replace("{*path}", "{path}"),
                route.method.to_string(),
                security.to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, served);
}

/// One malformed request.
#[derive(Debug, Clone)]
struct Malformed {
    route: usize,
    id: String,
    rest: String,
    query: String,
    content_type: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Text for a path segment: hostile ones and random ones, percent-encoded
/// so the request line stays valid.
fn any_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "..",
            "%2e%2e",
            "..%2F..%2Fetc%2Fpasswd",
            "%00",
            "%ff%fe",
            "%F0%9F%98%80",
            "nope",
            "a%2Fb",
            "%25",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9_-]{0,300}",
        "\\PC{0,20}".prop_map(|s| s.bytes().map(|b| format!("%{b:02X}")).collect()),
    ]
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..200),
        "\\PC{0,200}".prop_map(String::into_bytes),
        (1usize..20_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        (1usize..3).prop_map(|mib| vec![b'x'; mib << 20]),
        prop::sample::select(vec![
            r#"{"action": "pause"}"#,
            r#"{"action": "retry_step", "stepId": "../../x"}"#,
            r#"{"type": "task", "task": {"steps": [{"plugin": {"path": "/dev/zero"}}]}}"#,
            r#"{"type": "task", "task": {"repository": "/etc", "steps": []}}"#,
            r#"{"attempt": -1, "leaseToken": null}"#,
            r#"{"a": 1e999999}"#,
            "null",
            "\"\\ud800\"",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

fn any_malformed(routes: usize) -> impl Strategy<Value = Malformed> {
    let header = (
        prop::sample::select(vec![
            "idempotency-key",
            "accept",
            "last-event-id",
            "content-encoding",
            "transfer-encoding-x",
            "x-forwarded-for",
            "range",
        ]),
        "[ -~]{0,200}",
    )
        .prop_map(|(name, value)| (name.to_owned(), value));
    (
        0..routes,
        (any_segment(), prop::collection::vec(any_segment(), 1..4)),
        prop::sample::select(vec![
            "",
            "?limit=-1",
            "?limit=99999999999999999999",
            "?status=nope",
            "?after=abc",
            "?stream=maybe",
            "?after=-9223372036854775808&limit=0",
            "?%ff=%fe",
        ]),
        prop::option::of(prop::sample::select(vec![
            "application/json",
            "text/plain",
            "application/json; charset=utf-16",
            "multipart/form-data; boundary=x",
            "application/json;;;==\t",
        ])),
        prop::collection::vec(header, 0..3),
        any_body(),
    )
        .prop_map(|(route, (id, rest), query, content_type, headers, body)| Malformed {
            route,
            id,
            rest: rest.join("/"),
            query: query.to_owned(),
            content_type: content_type.map(str::to_owned),
            headers,
            body,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_paths_headers_and_bodies_on_every_route_never_get_a_5xx_or_a_hang() {
    let cluster = Cluster::start(Mode::Embedded, 0, 0).await;
    let job = cluster
        .submit(&task(1, vec![write_step("one", "a.txt", "a", 0)], json!({})))
        .await;
    let routes = route_table();
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(var("STEPD_FUZZ_SEED").unwrap_or(10)),
        ..Config::default()
    });
    let cases = var("STEPD_FUZZ_CASES").unwrap_or(300);
    let strategy = any_malformed(routes.len());
    // A fresh connection for every case: a connection the server closed
    // after the previous case (a body it would not read) must not be
    // reused and mistaken for this case's failure.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client");
    for n in 0..cases {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let route = &routes[case.route];
        // Half the cases name the real job, so handlers get past the lookup.
        let id = if n % 2 == 0 { job.clone() } else { case.id.clone() };
        let path = route.path.replace("{id}", &id).replace("{*path}", &case.rest);
        let mut request = http
            .request(route.method.clone(), format!("{}{}{}", cluster.url, path, case.query))
            .timeout(Duration::from_secs(20));
        let token = match route.access {
            Access::Needs(Scope::Worker) => WORKER_TOKEN,
            _ => OPERATOR_TOKEN,
        };
        request = request.header("authorization", format!("Bearer {token}"));
        if let Some(content_type) = &case.content_type {
            request = request.header("content-type", content_type.as_str());
        }
        for (name, value) in &case.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.body(case.body.clone()).send().await;
        let what = format!(
            "case {n}: {} {path}{} ({} body bytes)",
            route.method,
            case.query,
            case.body.len()
        );
        let response = match response {
            Ok(response) => response,
            // A route that reads no body (or stops at its limit) answers
            // before a large body is sent and closes the connection: the
            // client sees the reset while still sending. The server must
            // still be there; anything smaller must get an answer.
            Err(e) if case.body.len() >= 64 << 10 && !e.is_timeout() => {
                let health = cluster.request(reqwest::Method::GET, "/healthz").send().await;
                assert!(
                    health.is_ok_and(|h| h.status().is_success()),
                    "{what}: then /healthz failed"
                );
                continue;
            }
            Err(e) => panic!("{what}: no answer: {e:?}"),
        };
        let status = response.status().as_u16();
        let streaming = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        assert!(status < 500, "{what}: {status}");
        if streaming {
            // A live event stream for the real job: its head is the answer.
            continue;
        }
        let body = tokio::time::timeout(Duration::from_secs(20), response.bytes())
            .await
            .unwrap_or_else(|_| panic!("{what}: the body never ended"))
            .unwrap_or_default();
        if status >= 400 {
            let error: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{what}: {status} without a JSON error ({e}): {body:?}"));
            assert!(
                error["code"].is_string() && error["message"].is_string(),
                "{what}: {error}"
            );
        }
    }
    let health = cluster
        .request(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .expect("healthz");
    assert!(health.status().is_success());
    assert!(!cluster.server.log().contains("panicked"), "{}", cluster.server.log());
    cluster.shutdown().await;
}
