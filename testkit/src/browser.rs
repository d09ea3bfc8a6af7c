//! Headless Chromium for end-to-end tests of web pages (the operations console), driven by
//! WebDriver: Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them),
//! `chromedriver` started on a loopback port per [`Browser`], a fresh profile directory, the
//! flags Chromium needs on a machine without outside network. Screenshots go to
//! `<target dir>/test-artifacts/<test>/` (printed), which CI keeps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

/// Where Debian puts them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian puts it.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `<target dir>/test-artifacts/<name>` (created): the test binary lives in
/// `<target dir>/<profile>/deps/`.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("test-artifacts").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    /// The WebDriver session.
    pub client: Client,
    /// Where [`Browser::screenshot`] writes.
    pub artifacts: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session that accepts the test's self-issued
    /// certificates; screenshots go to [`artifacts_dir`]`(name)`.
    pub async fn start(name: &str) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver packages \
                 (.ci/run does)"
            );
        }
        let port = crate::procs::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let caps = serde_json::json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from {CHROMEDRIVER} at {url}: {e}"),
            }
        };
        let artifacts = artifacts_dir(name);
        eprintln!("screenshots: {}", artifacts.display());
        Browser {
            driver,
            client,
            artifacts,
            _profile: profile,
        }
    }

    /// A PNG of the window, written to `<artifacts>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot {}", path.display());
        path
    }

    /// The element `css` selects, once there is one (panics after `within`, with the page's
    /// text).
    pub async fn wait_for(&self, css: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                return e;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {css:?} within {within:?} on {}: {}",
                    self.url().await,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the text of `css` satisfies `pred`; returns it.
    pub async fn wait_text(
        &self,
        css: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if pred(&text) {
                return text;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the text of {css:?} on {} is not as expected within {within:?}: {text:?}; \
                     the page says: {}",
                    self.url().await,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// The page's visible text.
    pub async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        }
    }

    /// Types `text` into the field `css` (cleared first).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.wait_for(css, Duration::from_secs(5)).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Clicks `css` (found again if a live update replaced it under the click).
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let e = self.wait_for(css, Duration::from_secs(5)).await;
            match e.click().await {
                Ok(_) => return,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("clicking {css:?}: {err}"),
            }
        }
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
