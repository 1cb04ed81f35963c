//! Issue 14: security hardening. Every finding has its regression test
//! here: media only from under POSTBACK_MEDIA_ROOT (and re-checked at the
//! attempt), the schema name, settings that passed parsing and broke later,
//! admin commands on an unreachable database, the API edge, TLS to
//! PostgreSQL, and the proxy path.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{Answer, Receiver, TestApp};

/// Every test runs inside this bound.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test did not finish within 90 s")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A fresh directory of this test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pb-sec-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn media_job(id: &str, url: &str) -> Value {
    json!({"jobId": id, "publish": {"callbacks": [
        {"url": url, "method": "PUT", "type": "media", "stream": "original"}
    ]}})
}

fn result_with_stream(path: &Path) -> Value {
    json!({
        "status": "finished",
        "result": {"transcript": {"words": []}},
        "streams": [{"streamName": "original", "path": path.to_string_lossy(), "contentType": "audio/mpeg"}]
    })
}

// ---- Finding 1: any file on the host could be uploaded -------------------

#[tokio::test]
async fn without_a_media_root_a_result_a_media_callback_would_send_is_media_disabled() {
    bounded(async {
        let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
        assert_eq!(
            app.post("/v1/jobs", media_job("m1", "https://example.org/m"))
                .await
                .status(),
            201
        );
        let (status, body) = json_of(
            app.post(
                "/v1/jobs/m1/result",
                result_with_stream(Path::new("/proc/self/environ")),
            )
            .await,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "media_disabled", "{body}");
        let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.deliveries")
            .fetch_one(&app.pool)
            .await
            .expect("count");
        assert_eq!(deliveries, 0, "nothing was queued");
        // A stream no media callback sends is fine without a root.
        let job =
            json!({"jobId": "a1", "publish": {"callbacks": [{"url": "https://example.org/a"}]}});
        assert_eq!(app.post("/v1/jobs", job).await.status(), 201);
        let (status, body) = json_of(
            app.post(
                "/v1/jobs/a1/result",
                result_with_stream(Path::new("/proc/self/environ")),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    })
    .await
}

#[tokio::test]
async fn media_paths_outside_the_root_get_the_same_answer_as_missing_ones() {
    bounded(async {
        let root = temp_dir("root");
        let outside = temp_dir("outside");
        std::fs::write(outside.join("secret"), b"SECRET").expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).expect("symlink");
        std::fs::write(root.join("ok.bin"), b"audio").expect("write");
        let root_for_app = root.clone();
        let app = TestApp::spawn_with(move |c| {
            c.concurrency = 0;
            c.media_root = vec![root_for_app];
        })
        .await;
        let cases = [
            PathBuf::from("/proc/self/environ"),
            PathBuf::from("/etc/passwd"),
            root.join("..")
                .join(outside.file_name().expect("name"))
                .join("secret"),
            root.join("link"),
            root.join("missing.bin"),
            PathBuf::from("relative/ok.bin"),
        ];
        let mut messages = Vec::new();
        for (i, path) in cases.iter().enumerate() {
            let id = format!("m{i}");
            assert_eq!(
                app.post("/v1/jobs", media_job(&id, "https://example.org/m"))
                    .await
                    .status(),
                201
            );
            let (status, body) = json_of(
                app.post(&format!("/v1/jobs/{id}/result"), result_with_stream(path))
                    .await,
            )
            .await;
            assert_eq!(status, 400, "{path:?}: {body}");
            assert_eq!(body["error"]["code"], "missing_stream", "{path:?}: {body}");
            messages.push(body["error"]["message"].clone());
        }
        assert!(
            messages.windows(2).all(|w| w[0] == w[1]),
            "not found and not allowed must read the same: {messages:?}"
        );
        // A regular file under the root is accepted.
        assert_eq!(
            app.post("/v1/jobs", media_job("ok", "https://example.org/m"))
                .await
                .status(),
            201
        );
        let (status, body) = json_of(
            app.post(
                "/v1/jobs/ok/result",
                result_with_stream(&root.join("ok.bin")),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    })
    .await
}

#[tokio::test]
async fn the_attempt_checks_the_root_again_when_the_file_became_a_symlink() {
    bounded(async {
        let root = temp_dir("root");
        let outside = temp_dir("outside");
        std::fs::write(outside.join("environ"), b"SECRET-ENVIRONMENT").expect("write");
        let media = root.join("a.bin");
        std::fs::write(&media, b"audio-bytes").expect("write");
        let root_for_app = root.clone();
        let app = TestApp::spawn_with(move |c| c.media_root = vec![root_for_app]).await;
        let rx = Receiver::start().await;
        // The first attempt fails slowly: the file is swapped meanwhile.
        rx.script([Answer::status(500).delayed(Duration::from_millis(800))]);
        assert_eq!(
            app.post("/v1/jobs", media_job("j", &rx.url("/media")))
                .await
                .status(),
            201
        );
        let (status, done) = json_of(
            app.post("/v1/jobs/j/result", result_with_stream(&media))
                .await,
        )
        .await;
        assert_eq!(status, 200, "{done}");
        let id = done["callbacks"][0]["deliveryId"]
            .as_str()
            .expect("id")
            .to_owned();
        let first = rx.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(&first[0].body[..], b"audio-bytes");
        std::fs::remove_file(&media).expect("unlink");
        std::os::unix::fs::symlink(outside.join("environ"), &media).expect("symlink");
        // The immediate retries run after the swap: each is refused.
        let view = app
            .wait_delivery(&id, Duration::from_secs(20), |v| {
                v["attempts"].as_array().is_some_and(|a| a.len() >= 3)
            })
            .await;
        for got in rx.received() {
            assert!(
                !String::from_utf8_lossy(&got.body).contains("SECRET"),
                "a file outside the media root was sent"
            );
        }
        assert_eq!(rx.received().len(), 1, "{view:#}");
        let errors = view["attempts"].to_string();
        assert!(errors.contains("media file refused"), "{view:#}");
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    })
    .await
}
