//! The API's group commit: concurrent requests share a statement, each is
//! answered only once stored, and one failing row fails alone.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{Receiver, TestApp};

#[tokio::test]
async fn concurrent_deliveries_are_each_stored_once_and_delivered_once() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..300 {
        let http = app.http.clone();
        let url = app.url("/v1/deliveries");
        let target = receiver.url(&format!("/n/{i}"));
        requests.spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(crate::helpers::TOKEN)
                .json(&json!({"url": target, "json": {"i": i}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["deliveryId"]
                .as_str()
                .unwrap()
                .to_owned()
        });
    }
    let mut ids = HashSet::new();
    while let Some(id) = requests.join_next().await {
        ids.insert(id.unwrap());
    }
    assert_eq!(ids.len(), 300);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.deliveries d JOIN postback.payloads p ON p.delivery_id = d.id")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 300);
    let got = receiver.wait_for(300, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.len().max(got_ids.len()), 300, "duplicates were sent");
    assert_eq!(got_ids.iter().collect::<HashSet<_>>().len(), 300);
    for id in &ids {
        assert!(got_ids.contains(id), "{id} never arrived");
    }
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
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..40 {
        let http = app.http.clone();
        let url = app.url("/v1/deliveries");
        let target = receiver.url(if i == 7 { "/poison" } else { "/fine" });
        requests.spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(crate::helpers::TOKEN)
                .json(&json!({"url": target, "json": {}}))
                .send()
                .await
                .unwrap();
            (target.contains("poison"), response.status().as_u16())
        });
    }
    while let Some(outcome) = requests.join_next().await {
        let (poisoned, status) = outcome.unwrap();
        if poisoned {
            assert_eq!(status, 500);
        } else {
            assert_eq!(status, 202);
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
