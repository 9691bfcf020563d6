//! Billing end to end on `strata dev` and on a local cluster: metering in the proxy, the metering queue, the billing
//! service's count, and the usage API.
//!
//! - Reconciliation: random billable calls of two tenants and three sub-tenants, retried with
//!   the same request id until answered, some repeated after their answer (a client that lost
//!   the answer), failing calls mixed in, and in the middle a SIGKILL: of the whole `strata dev`
//!   process, or of one proxy of a local cluster (the clients go on through the other). The
//!   billed units and calls equal the client's own ledger, exactly, per tenant and sub-tenant.
//! - Rejected calls (no token, invalid requests, missing queues, throttled, hard cap) are not
//!   billed, as docs/design-notes.md ("Billing") says.
//! - A tenant reads only its own usage and invoices.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_client::ClientError;
use strata_tests::cluster::{LocalCluster, PROXIES};
use strata_tests::{Api, DevProcess, model};

/// One tenant's sub-tenants (empty: none given).
const CUSTOMERS: [&str; 3] = ["", "shop-1", "shop-2"];
/// Bodies of the queue whose messages are received: small, so a receive is always one unit.
const SMALL_BODY_BYTES_MAX: usize = 1_000;
/// Bodies of the queue only sent to: 100 KiB, two units each.
const BIG_BODY_BYTES: usize = 100 * 1024;
/// How long the billing service may take to count everything.
const COUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// A small deterministic generator (the test needs no crate for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Billed calls and units per (tenant, sub-tenant).
type Ledger = BTreeMap<(String, String), (u64, u64)>;

/// Runs one logical call until the service answers it (a connection failure or a 503 is
/// retried with the same request id and body, at the next proxy of `proxies`); answers the
/// final status and body.
async fn until_answered(proxies: &[Api], method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        match proxies[attempt % proxies.len()].call(method.clone(), path, body.clone()).await {
            Ok((status, value)) if status != 503 => return (status, value),
            outcome => {
                assert!(started.elapsed() < Duration::from_secs(120), "{path} never answered: {outcome:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        attempt += 1;
    }
}

/// The billed calls and units per sub-tenant of the tenant whose client `api` is.
async fn billed(api: &Api) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let (status, usage) = api.get("/v1/billing/usage?group_by=sub_tenant").await?;
    anyhow::ensure!(status == 200, "usage answered {status}: {usage}");
    let mut out = BTreeMap::new();
    for row in usage["rows"].as_array().into_iter().flatten() {
        let sub_tenant = row["sub_tenant"].as_str().unwrap_or_default().to_owned();
        out.insert(sub_tenant, (row["calls"].as_u64().unwrap_or(0), row["units"].as_u64().unwrap_or(0)));
    }
    Ok(out)
}

/// Waits until the billing service has counted `expected` for the tenant of `api` (this
/// month's usage), or answers what it counted by the timeout.
async fn wait_for_count(
    api: &Api,
    expected: &BTreeMap<String, (u64, u64)>,
) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let started = Instant::now();
    loop {
        let now = billed(api).await?;
        if &now == expected || started.elapsed() > COUNT_TIMEOUT {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Random calls of one tenant through `endpoints` (the next one when a call fails); answers
/// what must be billed.
async fn random_calls(
    endpoints: Vec<String>,
    token: String,
    tenant: String,
    calls: usize,
    seed: u64,
    done: Arc<AtomicUsize>,
) -> anyhow::Result<Ledger> {
    let mut rng = Rng(seed);
    let mut ledger = Ledger::new();
    let mut receipts: Vec<String> = Vec::new();
    for n in 0..calls {
        let customer = CUSTOMERS[rng.below(3) as usize];
        let client: Vec<Api> = endpoints
            .iter()
            .map(|endpoint| {
                let api =
                    Api::new(endpoint, &token).with_header("x-strata-request-id", &format!("{tenant}-{seed}-{n}"));
                if customer.is_empty() { api } else { api.with_header("x-strata-customer", customer) }
            })
            .collect();
        let post = reqwest::Method::POST;
        let send = |body: String| Some(json!({ "messages": [{ "body": body }] }));
        // (method, path, body, billed units; None: the call must fail and is not billed)
        let (method, path, body, units) = match rng.below(8) {
            0 | 1 => {
                let body = "s".repeat(1 + rng.below(SMALL_BODY_BYTES_MAX as u64) as usize);
                (post, "/v1/queues/small/messages", send(body), Some(1))
            }
            2 => (post, "/v1/queues/big/messages", send("b".repeat(BIG_BODY_BYTES)), Some(2)),
            3 => (post, "/v1/queues/small/receive", Some(json!({ "max_messages": 1 })), Some(1)),
            4 if !receipts.is_empty() => {
                let receipt = receipts.swap_remove(0);
                (post, "/v1/queues/small/delete", Some(json!({ "receipt_handles": [receipt] })), Some(1))
            }
            4 | 5 => (reqwest::Method::GET, "/v1/queues/small", None, Some(1)),
            6 => (post, "/v1/queues/missing/messages", send("x".into()), None),
            _ => (post, "/v1/queues/small/messages", Some(json!({ "messages": [] })), None),
        };
        let (status, answer) = until_answered(&client, method.clone(), path, body.clone()).await;
        match units {
            Some(units) => {
                anyhow::ensure!((200..300).contains(&status), "{path} answered {status}: {answer}");
                let entry = ledger.entry((tenant.clone(), customer.to_owned())).or_default();
                entry.0 += 1;
                entry.1 += units;
                for m in answer["messages"].as_array().into_iter().flatten() {
                    if let Some(receipt) = m["receipt_handle"].as_str() {
                        receipts.push(receipt.to_owned());
                    }
                }
            }
            None => anyhow::ensure!((400..500).contains(&status), "{path} should fail, answered {status}: {answer}"),
        }
        // A client that lost the answer sends the same call again: billed once.
        if rng.below(5) == 0 {
            until_answered(&client, method, path, body).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(ledger)
}

/// The tenants of the reconciliation tests and their calls each.
const TENANTS: [&str; 2] = ["acme", "globex"];
const CALLS_PER_TENANT: usize = 150;

/// Creates two queues per tenant, then runs [`random_calls`] for each tenant at once through
/// `endpoints`, and calls `crash` once a fifth of the calls are done, with both tenants' calls
/// in flight (they retry until served again). Answers the clients' ledger.
async fn calls_through_a_crash(
    endpoints: &[String],
    tokens: &BTreeMap<&str, String>,
    crash: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Ledger> {
    // Creating the two queues is billed too (one unit each, no sub-tenant).
    let mut ledger = Ledger::new();
    for tenant in TENANTS {
        let api = Api::new(&endpoints[0], &tokens[tenant]);
        api.create_queue(&model::CreateQueue::named("small")).await?;
        api.create_queue(&model::CreateQueue::named("big")).await?;
        ledger.insert((tenant.to_owned(), String::new()), (2, 2));
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut runs = Vec::new();
    for (i, tenant) in TENANTS.into_iter().enumerate() {
        let token = tokens[tenant].clone();
        let run =
            random_calls(endpoints.to_vec(), token, tenant.to_owned(), CALLS_PER_TENANT, 7 + i as u64, done.clone());
        runs.push(tokio::spawn(run));
    }
    while done.load(Ordering::Relaxed) < CALLS_PER_TENANT * TENANTS.len() / 5 {
        anyhow::ensure!(!runs.iter().any(|r| r.is_finished()), "a tenant's calls ended early (failed)");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(crash)?;
    for run in runs {
        for (key, (calls, units)) in run.await?? {
            let entry = ledger.entry(key).or_default();
            entry.0 += calls;
            entry.1 += units;
        }
    }
    Ok(ledger)
}

/// Asserts that what `billing_endpoint` counted for each tenant equals the ledger, per
/// sub-tenant.
async fn assert_billed_as_ledger(
    billing_endpoint: &str,
    tokens: &BTreeMap<&str, String>,
    ledger: &Ledger,
) -> anyhow::Result<()> {
    for tenant in TENANTS {
        let expected: BTreeMap<String, (u64, u64)> =
            ledger.iter().filter(|((t, _), _)| t == tenant).map(|((_, s), v)| (s.clone(), *v)).collect();
        let counted = wait_for_count(&Api::new(billing_endpoint, &tokens[tenant]), &expected).await?;
        assert_eq!(counted, expected, "tenant {tenant}: billed (calls, units) per sub-tenant vs the client's ledger");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billed_units_match_the_clients_ledger_through_retries_failures_and_a_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(dir.path(), &[])?;
    let tokens: BTreeMap<&str, String> =
        TENANTS.into_iter().map(|t| Ok((t, dev.token_for(t)?))).collect::<anyhow::Result<_>>()?;
    let endpoint = dev.endpoint.clone();
    // The whole process goes: proxy, storage node and billing service.
    let ledger = calls_through_a_crash(std::slice::from_ref(&endpoint), &tokens, || {
        dev.kill9();
        std::thread::sleep(Duration::from_millis(500));
        dev.restart()
    })
    .await?;
    assert_billed_as_ledger(&dev.endpoint, &tokens, &ledger).await
}

/// The same on a local cluster (three storage nodes, two proxies, a billing service): one proxy
/// is SIGKILLed in the middle, and the clients go on through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billed_units_match_the_clients_ledger_when_one_proxy_of_a_cluster_is_sigkilled() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = LocalCluster::up(&dir.path().join("cluster"), LocalCluster::port_base(0))?;
    let env = cluster.credentials()?;
    let proxies: Vec<String> = env["STRATA_PROXY_ENDPOINTS"].split(',').map(str::to_owned).collect();
    let tokens: BTreeMap<&str, String> =
        TENANTS.into_iter().map(|t| Ok((t, cluster.token_for(t)?))).collect::<anyhow::Result<_>>()?;
    let ledger = calls_through_a_crash(&proxies, &tokens, || cluster.kill9(PROXIES[0])).await?;
    assert_billed_as_ledger(&env["STRATA_BILLING_ENDPOINT"], &tokens, &ledger).await
}

/// The current month as `YYYY-MM` (UTC).
fn this_month() -> anyhow::Result<String> {
    use strata_common::Clock;
    Ok(strata_billing::pricing::Month::of_ms(strata_common::SystemClock.now_ms())?.to_string())
}

/// Sends one small message; answers the status, the `Retry-After` header and the error body.
async fn send_one(endpoint: &str, token: &str) -> anyhow::Result<(u16, Option<u64>, Value)> {
    let messages = model::SendMessages { messages: vec![model::NewMessage::new("m")] };
    match Api::new(endpoint, token).send("q", &messages, None).await {
        Ok(_) => Ok((200, None, Value::Null)),
        Err(ClientError::Api { status, code, message, retry_after_s }) => {
            Ok((status, retry_after_s, json!({ "error": { "code": code, "message": message } })))
        }
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_calls_are_not_billed_and_a_tenant_reads_only_its_own_bill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(dir.path(), &[])?;
    let admin = dev.admin_api()?;
    let token = dev.token_for("payer")?;
    let api = Api::new(&dev.endpoint, &token);
    api.create_queue(&model::CreateQueue::named("q")).await?;
    let mut accepted = 1u64;

    // Rejected before any work: no token, a token of another issuer's key, invalid requests,
    // a missing queue, a malformed customer tag.
    assert_eq!(
        api.without_token().post("/v1/queues/q/messages", json!({ "messages": [{ "body": "m" }] })).await?.0,
        401
    );
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwYXllciJ9.c2lnbmF0dXJl";
    assert_eq!(api.with_token(forged).post("/v1/queues/q/messages", json!({ "messages": [] })).await?.0, 401);
    assert_eq!(api.post("/v1/queues/q/messages", json!({ "messages": [] })).await?.0, 400);
    assert_eq!(api.post("/v1/queues/q/receive", json!({ "max_messages": 99 })).await?.0, 400);
    assert_eq!(api.post("/v1/queues/nope/messages", json!({ "messages": [{ "body": "m" }] })).await?.0, 404);
    let bad_tag = api.with_header("x-strata-customer", "no spaces allowed");
    assert_eq!(bad_tag.post("/v1/queues/q/messages", json!({ "messages": [{ "body": "m" }] })).await?.0, 400);

    // Throttled: two requests per second. Calls over it answer 429 with Retry-After, unbilled.
    let (status, limits) = admin
        .call(
            reqwest::Method::PUT,
            "/admin/v1/tenants/payer/limits",
            Some(json!({ "overrides": { "requests_per_second": 2 } })),
        )
        .await?;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(limits["effective"]["requests_per_second"], 2);
    let (mut throttled, started) = (0, Instant::now());
    while throttled < 5 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "never throttled");
        let (status, retry_after, body) = send_one(&dev.endpoint, &token).await?;
        match status {
            200 => accepted += 1,
            429 => {
                throttled += 1;
                assert_eq!(body["error"]["code"], "Throttled");
                assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After");
            }
            other => anyhow::bail!("unexpected {other}: {body}"),
        }
    }
    let lifted = json!({ "overrides": {} });
    assert_eq!(admin.call(reqwest::Method::PUT, "/admin/v1/tenants/payer/limits", Some(lifted)).await?.0, 200);

    // Hard cap: one dollar per unit, a cap of five dollars; once reached, calls are refused.
    let plan =
        json!({ "kind": "pay_per_call", "free_units_per_month": 0, "price_per_million_units": 1_000_000_000_000u64 });
    assert_eq!(admin.call(reqwest::Method::PUT, "/admin/v1/tenants/payer/billing/plan", Some(plan)).await?.0, 200);
    let budget = json!({ "monthly_budget": 3_000_000, "hard_cap": 5_000_000 });
    assert_eq!(admin.call(reqwest::Method::PUT, "/admin/v1/tenants/payer/billing/budget", Some(budget)).await?.0, 200);
    let started = Instant::now();
    loop {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the hard cap never applied");
        let (status, _, body) = send_one(&dev.endpoint, &token).await?;
        match status {
            200 => accepted += 1,
            429 => {}
            400 if body["error"]["code"] == "LimitExceeded" => {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("hard cap"), "{message}");
                break;
            }
            other => anyhow::bail!("unexpected {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, alerts) = api.get("/v1/billing/alerts").await?;
    let kinds: Vec<&str> =
        alerts["alerts"].as_array().into_iter().flatten().filter_map(|a| a["kind"].as_str()).collect();
    assert!(kinds.contains(&"budget_reached") && kinds.contains(&"hard_cap_reached"), "{alerts}");

    // Billed: exactly the accepted calls.
    let expected = BTreeMap::from([(String::new(), (accepted, accepted))]);
    assert_eq!(wait_for_count(&api, &expected).await?, expected);

    // Another tenant's bill is out of reach: the usage routes take no tenant, the admin routes
    // refuse a tenant token, and the other tenant's own usage holds only its calls.
    let other = Api::new(&dev.endpoint, &dev.token_for("other")?);
    other.create_queue(&model::CreateQueue::named("q")).await?;
    let other_expected = BTreeMap::from([(String::new(), (1, 1))]);
    assert_eq!(wait_for_count(&other, &other_expected).await?, other_expected);
    assert_eq!(other.get("/v1/billing/usage?tenant=payer").await?.0, 400);
    let admin_route = Api::new(&dev.admin_endpoint()?, &dev.token_for("other")?);
    assert_eq!(admin_route.get("/admin/v1/tenants/payer/billing/usage").await?.0, 401);
    let (status, invoice) = other.get(&format!("/v1/billing/invoices/{}", this_month()?)).await?;
    assert_eq!(status, 200);
    assert_eq!(invoice["tenant"], "other");
    assert_eq!(invoice["rating"]["total_units"], 1, "{invoice}");
    Ok(())
}
