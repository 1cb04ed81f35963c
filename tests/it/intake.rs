//! The API's group commit: concurrent requests share a statement, each is
//! answered only once stored, and one failing row fails alone.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{Receiver, TestApp};

/// POSTs every body to `/v1/deliveries` at once (they share the group
/// commit's statements); each answer's status and JSON body, in the order
/// of `bodies`.
async fn post_concurrently(app: &TestApp, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let mut requests = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let http = app.http.clone();
        let url = app.url("/v1/deliveries");
        requests.spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(crate::helpers::TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                i,
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        });
    }
    let mut answers = vec![(0, Value::Null); requests.len()];
    while let Some(answer) = requests.join_next().await {
        let (i, status, body) = answer.unwrap();
        answers[i] = (status, body);
    }
    answers
}

/// Waits for a callback of each of `ids` (bounded), then checks that each
/// arrived exactly once and nothing else did.
async fn each_sent_once(receiver: &Receiver, ids: &HashSet<String>) {
    let got = receiver.wait_for(ids.len(), Duration::from_secs(30)).await;
    // Room for a duplicate to show up after the last expected one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        got.len().max(sent.len()),
        ids.len(),
        "a delivery was sent twice or never"
    );
    assert_eq!(&sent.into_iter().collect::<HashSet<_>>(), ids);
}

#[tokio::test]
async fn concurrent_deliveries_are_each_stored_once_and_delivered_once() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    let bodies = (0..300)
        .map(|i| json!({"url": receiver.url(&format!("/n/{i}")), "json": {"i": i}}))
        .collect();
    let mut ids = HashSet::new();
    for (status, body) in post_concurrently(&app, bodies).await {
        assert_eq!(status, 202, "{body}");
        ids.insert(body["deliveryId"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 300);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.deliveries d JOIN postback.payloads p ON p.delivery_id = d.id")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 300);
    each_sent_once(&receiver, &ids).await;
    app.stop().await;
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_alone() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    sqlx::query(
        "CREATE FUNCTION postback.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.url LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER poison BEFORE INSERT ON postback.deliveries FOR EACH ROW EXECUTE FUNCTION postback.refuse_poison()")
        .execute(&app.pool)
        .await
        .unwrap();
    let bodies = (0..40)
        .map(|i| json!({"url": receiver.url(if i == 7 { "/poison" } else { "/fine" }), "json": {}}))
        .collect();
    for (i, (status, body)) in post_concurrently(&app, bodies)
        .await
        .into_iter()
        .enumerate()
    {
        if i == 7 {
            assert_eq!(status, 500, "{body}");
        } else {
            assert_eq!(status, 202, "{body}");
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 39);
    let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.payloads WHERE delivery_id NOT IN (SELECT id FROM postback.deliveries)")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orphans, 0);
    app.stop().await;
}

/// A batch of one (every batch at light load) is stored by a single-row
/// statement, a larger one by the batch statement: both store the same
/// rows. Leased, held by an open breaker instead of leased, plain; and a
/// delivery for a customer that does not exist is refused by both.
#[tokio::test]
async fn a_batch_of_one_is_stored_as_a_batch_of_many_would_be() {
    use postback::store::deliveries::{insert_leased, NewDelivery};

    let app = TestApp::spawn().await;
    let schema = postback::Schema::default();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let row = |url: &str| NewDelivery::generic_json(url, b"{}".to_vec(), expires);
    let down = row("http://down.example/").origin;
    app.exec(&format!(
        "INSERT INTO postback.destinations (origin, state, consecutive_failures, opened_at,
                                            cooldown_secs, next_probe_at)
         VALUES ('{down}', 'open', 10, now(), 60, now() + interval '1 minute')"
    ))
    .await;
    let lease = Some((uuid::Uuid::now_v7(), Duration::from_secs(300)));
    // (url, lease, stored state, held by the breaker)
    let cases = [
        ("http://up.example/a", lease, "delivering", false),
        ("http://down.example/b", lease, "pending", true),
        ("http://up.example/c", None, "pending", false),
    ];
    let mut conn = app.pool.acquire().await.unwrap();
    let mut stored = Vec::new();
    for (url, lease, ..) in &cases {
        let one = row(url);
        let held = insert_leased(&mut conn, &schema, std::slice::from_ref(&one), &[*lease])
            .await
            .unwrap();
        stored.push((one.id, held.contains(&one.id)));
    }
    let many: Vec<_> = cases.iter().map(|(url, ..)| row(url)).collect();
    let leases: Vec<_> = cases.iter().map(|case| case.1).collect();
    let held = insert_leased(&mut conn, &schema, &many, &leases)
        .await
        .unwrap();
    stored.extend(many.iter().map(|d| (d.id, held.contains(&d.id))));

    for (i, (id, reported_held)) in stored.iter().enumerate() {
        let (_, _, state, held) = cases[i % cases.len()];
        let (got_state, leased, held_due): (String, bool, bool) = sqlx::query_as(
            "SELECT d.state, d.lease IS NOT NULL, d.held_due IS NOT NULL
             FROM postback.deliveries d JOIN postback.payloads p ON p.delivery_id = d.id
             WHERE d.id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let batch = if i < cases.len() { "alone" } else { "batch" };
        assert_eq!(got_state, state, "{batch} case {i}");
        assert_eq!(leased, state == "delivering", "{batch} case {i}");
        assert_eq!((held_due, *reported_held), (held, held), "{batch} case {i}");
    }

    for n in [1, 2] {
        let mut rows: Vec<_> = (0..n).map(|_| row("http://up.example/d")).collect();
        rows[0].customer_id = Some("nobody".into());
        let err = insert_leased(&mut conn, &schema, &rows, &vec![None; n])
            .await
            .expect_err("an unknown customer is refused");
        assert_eq!(err.code(), postback::ErrorCode::UnknownCustomer, "{n} rows");
    }
    let left = app
        .count("SELECT count(*) FROM postback.deliveries WHERE url LIKE '%/d'")
        .await;
    assert_eq!(left, 0, "a refused batch stores nothing");
    drop(conn);
    app.stop().await;
}

/// One request naming a customer that does not exist, among concurrent
/// ones sharing its statement: it alone is refused (400), every other one
/// is accepted, stored once and delivered once. (The batch statement used
/// to store the others and then refuse the whole batch: their retry one
/// by one met their own primary keys, and they were answered 500 for
/// deliveries that were stored and then sent.)
#[tokio::test]
async fn an_unknown_customer_in_a_shared_statement_fails_alone() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    let unknown = |i: usize| i % 20 == 7;
    let bodies = (0..60)
        .map(|i| {
            let mut body = json!({"url": receiver.url(&format!("/n/{i}")), "json": {"i": i}});
            if unknown(i) {
                body["customerId"] = json!("nobody");
            }
            body
        })
        .collect();
    let mut accepted = HashSet::new();
    for (i, (status, body)) in post_concurrently(&app, bodies)
        .await
        .into_iter()
        .enumerate()
    {
        if unknown(i) {
            assert_eq!(status, 400, "request {i}: {body}");
            assert_eq!(body["error"]["code"], "unknown_customer", "{body}");
        } else {
            assert_eq!(status, 202, "request {i}: {body}");
            accepted.insert(body["deliveryId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(accepted.len(), 57);
    each_sent_once(&receiver, &accepted).await;
    app.stop().await;
}
