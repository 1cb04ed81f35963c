//! Observability of SPEC §1 and §4: `postback healthcheck`, the log level
//! setting, colour only on a terminal, and `postback_build_info`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{fresh_database, output, postback, TestApp};

fn run(cmd: &mut Command) -> (i32, String) {
    output(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_is_0_when_ready_1_when_not_and_2_on_a_bad_url() {
    let app = TestApp::spawn().await;
    let (code, text) = run(postback().args(["healthcheck", "--url", &app.base]));
    assert_eq!(code, 0, "{text}");
    // Nothing listens on port 9 of loopback (discard is not served here).
    let started = Instant::now();
    let (code, text) = run(postback().args(["healthcheck", "--url", "http://127.0.0.1:9"]));
    assert_eq!(code, 1, "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (code, text) = run(postback().args(["healthcheck", "--url", "not a url"]));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--url"), "{text}");
}

#[test]
fn a_log_level_that_is_not_a_filter_is_exit_2_naming_it() {
    let (code, text) = run(postback()
        .args(["serve"])
        .env("POSTBACK_INSECURE_NO_AUTH", "1")
        .env("POSTBACK_LOG_LEVEL", "very=loud=please"));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("POSTBACK_LOG_LEVEL") || text.contains("--log-level"),
        "{text}"
    );
}

#[tokio::test]
async fn pretty_logs_into_a_pipe_carry_no_colour_and_honour_the_level() {
    let url = fresh_database().await;
    let mut child = postback()
        .args(["serve"])
        .env("DATABASE_URL", &url)
        .env("POSTBACK_INSECURE_NO_AUTH", "1")
        .env("POSTBACK_LISTEN", "127.0.0.1:0")
        .env("POSTBACK_LOG_LEVEL", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{err}");
    assert!(err.contains("running"), "{err}");
    assert!(
        err.contains("DEBUG"),
        "POSTBACK_LOG_LEVEL=debug shows debug lines: {err}"
    );
    assert!(!err.contains('\u{1b}'), "escape codes in a pipe: {err:?}");
}

#[tokio::test]
async fn build_info_carries_the_version() {
    let app = TestApp::spawn().await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "postback_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&line), "{line} missing");
}
