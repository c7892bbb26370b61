//! A real headless Chromium driven over WebDriver, for the dashboard's browser test.
//!
//! [`Browser::start`] runs its own `chromedriver` (a child process on a port it picks itself,
//! killed with everything it started when the `Browser` is dropped) and opens a fantoccini
//! session on a fresh profile. The helpers find things the way a user does: a control by the
//! text of its label, a button by its text, a heading, a live region by its role. They poll
//! (nothing in a single-page app is ready the instant a click returns) and fail with what they
//! were waiting for and what the page showed instead.
//!
//! Binaries: `WEBHOOKS_TEST_CHROMIUM` and `WEBHOOKS_TEST_CHROMEDRIVER` (set by `scripts/test.sh`
//! from `scripts/chromium.sh`), else `chromium` and `chromedriver` on `PATH`. When neither is
//! found, [`Browser::start`] fails (it never skips) and says how to get them.

use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::http::Method;
use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Environment variable naming the Chromium binary.
pub const CHROMIUM_ENV: &str = "WEBHOOKS_TEST_CHROMIUM";
/// Environment variable naming the chromedriver binary.
pub const CHROMEDRIVER_ENV: &str = "WEBHOOKS_TEST_CHROMEDRIVER";
/// How to get both, for the failure message.
const INSTALL_HINT: &str = "run the tests through scripts/test.sh (scripts/chromium.sh installs \
     Debian's chromium and chromium-driver), or `apt-get install chromium chromium-driver`, or set \
     WEBHOOKS_TEST_CHROMIUM and WEBHOOKS_TEST_CHROMEDRIVER";
/// How long [`Browser`]'s waits poll before failing.
pub const WAIT: Duration = Duration::from_secs(10);
/// Poll interval of the waits.
const POLL: Duration = Duration::from_millis(100);
/// How long chromedriver may take to start and answer `/status` as ready.
const DRIVER_READY: Duration = Duration::from_secs(20);
const DRIVER_PORT_MARK: &str = "started successfully on port ";
/// The W3C WebDriver key of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Finds the Chromium and chromedriver binaries: the environment variables, else `PATH`.
pub fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let chromium = from_env_or_path(CHROMIUM_ENV, &["chromium", "chromium-browser"])?;
    let driver = from_env_or_path(CHROMEDRIVER_ENV, &["chromedriver"])?;
    Ok((chromium, driver))
}

fn from_env_or_path(var: &str, names: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(explicit) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(explicit);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "{var}={} is not an executable file; {INSTALL_HINT}",
            path.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "the browser test needs {} but {var} is unset and none is on PATH; {INSTALL_HINT}",
        names.join(" or ")
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The workspace root (the parent of this crate), where `docs/screenshots/` lives.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// One entry of the browser's console log, as chromedriver reports it.
#[derive(Debug, Clone)]
pub struct ConsoleEntry {
    /// `SEVERE`, `WARNING`, `INFO`…
    pub level: String,
    /// `javascript` (an uncaught exception), `console-api` (`console.*`), `network` (a failed
    /// or non-2xx resource load)…
    pub source: String,
    pub message: String,
}

impl ConsoleEntry {
    /// An uncaught exception or a `console.error`: a defect of the page, unlike a `network`
    /// entry, which an expected 401 or 422 from the API also produces.
    pub fn is_script_error(&self) -> bool {
        self.level == "SEVERE" && self.source != "network"
    }
}

/// A chromedriver extension command, `POST /session/{id}/<path>`: the legacy log endpoint
/// (`se/log`, still the only way to read the console over WebDriver classic; each read drains
/// what it returns) and DevTools commands (`goog/cdp/execute`).
#[derive(Debug)]
struct ChromeCommand {
    /// The command's path under the session, e.g. `se/log`.
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for ChromeCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(self.body.to_string()))
    }
}

/// A headless Chromium session with its own chromedriver.
pub struct Browser {
    client: Client,
    driver: Option<Child>,
    driver_log: PathBuf,
    screenshots: PathBuf,
    /// Console entries read so far (chromedriver hands each out once).
    console: Mutex<Vec<ConsoleEntry>>,
    // Dropped after `Drop::drop` killed chromedriver and the browser: the profile and the log.
    _dir: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at 1280×800 on a fresh profile.
    pub async fn start() -> anyhow::Result<Browser> {
        let (chromium, driver_bin) = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("testkit-browser-")
            .tempdir()
            .context("create temp dir for the browser")?;
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).context("create the browser profile dir")?;
        let driver_log = dir.path().join("chromedriver.log");
        let (driver, port) = spawn_driver(&driver_bin, &driver_log)?;
        let mut browser_driver = DriverGuard(Some(driver));
        let base = format!("http://127.0.0.1:{port}");
        wait_driver_ready(&base, &driver_log).await?;

        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.display()),
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    "--lang=en-US",
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&base)
            .await
            .map_err(|e| {
                anyhow!(
                    "chromedriver could not start {}: {e}\n--- chromedriver log ---\n{}",
                    chromium.display(),
                    read_tail(&driver_log)
                )
            })?;
        let screenshots = workspace_root().join("docs").join("screenshots");
        let browser = Browser {
            client,
            driver: browser_driver.0.take(),
            driver_log,
            screenshots,
            console: Mutex::new(Vec::new()),
            _dir: dir,
        };
        browser.set_viewport(1280, 800).await?;
        Ok(browser)
    }

    /// The underlying WebDriver client, for anything the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The end of chromedriver's log, for a failure message.
    pub fn driver_log(&self) -> String {
        read_tail(&self.driver_log)
    }

    /// Navigates to `url` and waits for the load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("navigate to {url}"))
    }

    /// The current URL.
    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self.client.current_url().await?.to_string())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its JSON result.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.client
            .execute(script, args)
            .await
            .with_context(|| format!("run script: {script}"))
    }

    /// Polls `probe` every 100 ms until it returns `Ok(Some(_))`, for up to `timeout`. An `Err`
    /// counts as "not yet" (a stale element while the page re-renders, say); the last one is in
    /// the failure message, together with the page's visible text.
    pub async fn wait_until<T, F, Fut>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_error = None;
        loop {
            match probe().await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            }
            if tokio::time::Instant::now() >= deadline {
                let page = self
                    .visible_text()
                    .await
                    .unwrap_or_else(|e| format!("({e})"));
                let url = self.current_url().await.unwrap_or_default();
                let last = last_error
                    .map(|e| format!("\nlast error: {e:#}"))
                    .unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what}{last}\nat {url}, the page showed:\n{page}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The page's visible text (`document.body.innerText`).
    pub async fn visible_text(&self) -> anyhow::Result<String> {
        let text = self
            .js(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// Waits until the page's visible text contains `text`.
    pub async fn wait_for_text(&self, text: &str) -> anyhow::Result<()> {
        self.wait_until(WAIT, &format!("the text {text:?}"), || async {
            Ok(self.visible_text().await?.contains(text).then_some(()))
        })
        .await
    }

    /// Waits until the page's visible text no longer contains `text`.
    pub async fn wait_for_text_gone(&self, text: &str) -> anyhow::Result<()> {
        self.wait_until(WAIT, &format!("the text {text:?} to go"), || async {
            Ok((!self.visible_text().await?.contains(text)).then_some(()))
        })
        .await
    }

    /// The displayed elements matching `xpath`, in document order.
    pub async fn displayed(&self, xpath: &str) -> anyhow::Result<Vec<Element>> {
        let mut shown = Vec::new();
        for element in self.client.find_all(Locator::XPath(xpath)).await? {
            if element.is_displayed().await? {
                shown.push(element);
            }
        }
        Ok(shown)
    }

    /// Waits for the first displayed element matching `xpath`.
    pub async fn wait_for_xpath(&self, xpath: &str) -> anyhow::Result<Element> {
        self.wait_until(WAIT, &format!("an element at {xpath}"), || async {
            Ok(self.displayed(xpath).await?.into_iter().next())
        })
        .await
    }

    /// Waits for a displayed element with id `id`.
    pub async fn wait_for_id(&self, id: &str) -> anyhow::Result<Element> {
        self.wait_for_xpath(&format!("//*[@id={}]", xpath_literal(id)))
            .await
    }

    /// Waits for a displayed heading `<h{level}>` whose text is `text`.
    pub async fn wait_for_heading(&self, level: u8, text: &str) -> anyhow::Result<Element> {
        self.wait_for_xpath(&format!(
            "//h{level}[normalize-space()={}]",
            xpath_literal(text)
        ))
        .await
    }

    /// Waits for a displayed, enabled `<button>` whose text is `text`.
    pub async fn button(&self, text: &str) -> anyhow::Result<Element> {
        let xpath = format!("//button[normalize-space()={}]", xpath_literal(text));
        self.wait_until(WAIT, &format!("an enabled button {text:?}"), || async {
            for button in self.displayed(&xpath).await? {
                if button.is_enabled().await? {
                    return Ok(Some(button));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Clicks the button whose text is `text` (waiting for it).
    pub async fn click_button(&self, text: &str) -> anyhow::Result<()> {
        let button = self.button(text).await?;
        button
            .click()
            .await
            .with_context(|| format!("click the button {text:?}"))
    }

    /// Waits for a displayed link (`<a>`) whose text is `text`.
    pub async fn link(&self, text: &str) -> anyhow::Result<Element> {
        self.wait_for_xpath(&format!("//a[normalize-space()={}]", xpath_literal(text)))
            .await
    }

    /// Clicks the link whose text is `text` (waiting for it).
    pub async fn click_link(&self, text: &str) -> anyhow::Result<()> {
        let link = self.link(text).await?;
        link.click()
            .await
            .with_context(|| format!("click the link {text:?}"))
    }

    /// Waits for the form control labelled `label`: the `control` of a displayed `<label>`
    /// whose text is exactly `label` (by `for=` or by nesting), or a control whose
    /// `aria-label` is `label`.
    /// The current value of the control labelled `label`.
    pub async fn value(&self, label: &str) -> anyhow::Result<String> {
        Ok(self
            .control(label)
            .await?
            .prop("value")
            .await?
            .unwrap_or_default())
    }

    pub async fn control(&self, label: &str) -> anyhow::Result<Element> {
        const FIND: &str = r#"
            const wanted = arguments[0];
            const norm = (s) => (s || '').replace(/\s+/g, ' ').trim();
            const shown = (el) => !!(el && el.getClientRects().length);
            for (const l of document.querySelectorAll('label')) {
                if (norm(l.textContent) === wanted && l.control && (shown(l) || shown(l.control))) {
                    return l.control;
                }
            }
            for (const c of document.querySelectorAll('input, select, textarea')) {
                if (norm(c.getAttribute('aria-label')) === wanted && shown(c)) return c;
            }
            return null;
        "#;
        self.wait_until(WAIT, &format!("a control labelled {label:?}"), || async {
            let found = self.js(FIND, vec![json!(label)]).await?;
            self.element_from_json(&found)
        })
        .await
    }

    /// Replaces the value of the control labelled `label` by typing `value`.
    pub async fn fill(&self, label: &str, value: &str) -> anyhow::Result<()> {
        let input = self.control(label).await?;
        input
            .clear()
            .await
            .with_context(|| format!("clear {label:?}"))?;
        input
            .send_keys(value)
            .await
            .with_context(|| format!("type into {label:?}"))
    }

    /// Selects the option whose visible text is `option` in the `<select>` labelled `label`.
    pub async fn select(&self, label: &str, option: &str) -> anyhow::Result<()> {
        let select = self.control(label).await?;
        select
            .select_by_label(option)
            .await
            .with_context(|| format!("select {option:?} in {label:?}"))
    }

    /// Sets the checkbox labelled `label` to `checked` (clicking it if it differs).
    pub async fn set_checked(&self, label: &str, checked: bool) -> anyhow::Result<()> {
        let checkbox = self.control(label).await?;
        if checkbox.is_selected().await? != checked {
            checkbox
                .click()
                .await
                .with_context(|| format!("click the checkbox {label:?}"))?;
        }
        if checkbox.is_selected().await? != checked {
            bail!("the checkbox {label:?} did not become checked={checked}");
        }
        Ok(())
    }

    /// Waits for a displayed element with `role="{role}"` whose text contains `contains`, and
    /// answers its whole text.
    pub async fn wait_for_role(&self, role: &str, contains: &str) -> anyhow::Result<String> {
        let xpath = format!("//*[@role={}]", xpath_literal(role));
        self.wait_until(
            WAIT,
            &format!("a role={role} region saying {contains:?}"),
            || async {
                for region in self.displayed(&xpath).await? {
                    let text = region.text().await?;
                    if text.contains(contains) {
                        return Ok(Some(text));
                    }
                }
                Ok(None)
            },
        )
        .await
    }

    /// Sets the viewport (`window.innerWidth`×`innerHeight`) to `width`×`height` CSS pixels:
    /// the window is resized, then grown by what its frame takes; if the browser keeps a
    /// minimum window size, the viewport is emulated through the DevTools protocol instead.
    pub async fn set_viewport(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let wanted = json!([width, height]);
        let (mut w, mut h) = (width, height);
        for _ in 0..3 {
            self.client
                .set_window_size(w, h)
                .await
                .context("set the window size")?;
            let inner = self
                .js("return [window.innerWidth, window.innerHeight];", vec![])
                .await?;
            if inner == wanted {
                return Ok(());
            }
            let iw = inner[0].as_u64().unwrap_or(0) as i64;
            let ih = inner[1].as_u64().unwrap_or(0) as i64;
            w = (i64::from(w) + i64::from(width) - iw).clamp(1, 10_000) as u32;
            h = (i64::from(h) + i64::from(height) - ih).clamp(1, 10_000) as u32;
        }
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await?;
        let inner = self
            .js("return [window.innerWidth, window.innerHeight];", vec![])
            .await?;
        if inner != wanted {
            bail!("the viewport is {inner}, not {wanted}");
        }
        Ok(())
    }

    /// Sends a DevTools protocol command through chromedriver (`goog/cdp/execute`).
    pub async fn cdp(&self, cmd: &str, params: Value) -> anyhow::Result<Value> {
        self.client
            .issue_cmd(ChromeCommand {
                path: "goog/cdp/execute",
                body: json!({"cmd": cmd, "params": params}),
            })
            .await
            .with_context(|| format!("DevTools command {cmd}"))
    }

    /// Saves a PNG of the viewport as `docs/screenshots/<name>.png` under the workspace root.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.screenshots)
            .with_context(|| format!("create {}", self.screenshots.display()))?;
        let png = self
            .client
            .screenshot()
            .await
            .context("take a screenshot")?;
        if !png.starts_with(b"\x89PNG") {
            bail!("the screenshot {name} is not a PNG");
        }
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// `Err` with the widths when the page scrolls horizontally
    /// (`document.documentElement.scrollWidth > window.innerWidth`).
    pub async fn no_horizontal_scroll(&self) -> anyhow::Result<()> {
        let widths = self
            .js(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await?;
        let scroll = widths[0].as_u64().unwrap_or(u64::MAX);
        let inner = widths[1].as_u64().unwrap_or(0);
        if scroll > inner {
            let wide = self
                .js(
                    r#"const w = window.innerWidth;
                       return [...document.querySelectorAll('body *')]
                         .filter(e => e.getBoundingClientRect().right > w + 1)
                         .slice(0, 10)
                         .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                              + (e.className && typeof e.className === 'string' ? '.' + e.className.trim().replace(/\s+/g, '.') : '')
                              + ' right=' + Math.round(e.getBoundingClientRect().right));"#,
                    vec![],
                )
                .await
                .unwrap_or(Value::Null);
            bail!(
                "the page scrolls horizontally: scrollWidth {scroll} > innerWidth {inner}; wider than the viewport: {wide}"
            );
        }
        Ok(())
    }

    /// Every `input`, `select` and `textarea` (but `type=hidden`) with no label and no
    /// `aria-label`/`aria-labelledby`, described by tag, type, id and name.
    pub async fn unlabelled_controls(&self) -> anyhow::Result<Vec<String>> {
        let found = self
            .js(
                r#"return [...document.querySelectorAll('input, select, textarea')]
                     .filter(c => c.type !== 'hidden')
                     .filter(c => !(c.labels && c.labels.length)
                                  && !(c.getAttribute('aria-label') || '').trim()
                                  && !(c.getAttribute('aria-labelledby') || '').trim())
                     .map(c => `<${c.tagName.toLowerCase()} type=${c.type || ''} id=${c.id || ''} name=${c.name || ''}>`);"#,
                vec![],
            )
            .await?;
        Ok(found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every console entry so far (read from chromedriver and kept).
    pub async fn console(&self) -> anyhow::Result<Vec<ConsoleEntry>> {
        let fresh = self
            .client
            .issue_cmd(ChromeCommand {
                path: "se/log",
                body: json!({"type": "browser"}),
            })
            .await
            .context("read the browser console log")?;
        let mut kept = self
            .console
            .lock()
            .map_err(|_| anyhow!("console log lock poisoned"))?;
        for entry in fresh.as_array().into_iter().flatten() {
            kept.push(ConsoleEntry {
                level: entry["level"].as_str().unwrap_or_default().to_owned(),
                source: entry["source"].as_str().unwrap_or_default().to_owned(),
                message: entry["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(kept.clone())
    }

    /// The script errors (uncaught exceptions, `console.error`) logged so far.
    pub async fn script_errors(&self) -> anyhow::Result<Vec<ConsoleEntry>> {
        Ok(self
            .console()
            .await?
            .into_iter()
            .filter(ConsoleEntry::is_script_error)
            .collect())
    }

    /// Ends the session (the browser quits) and stops chromedriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let closed = self.client.clone().close().await;
        if let Some(mut driver) = self.driver.take() {
            kill_group(&mut driver);
        }
        closed.context("close the WebDriver session")
    }

    /// Turns a JSON element reference returned by a script into an [`Element`].
    fn element_from_json(&self, value: &Value) -> anyhow::Result<Option<Element>> {
        match value.get(ELEMENT_KEY).and_then(Value::as_str) {
            Some(id) => Ok(Some(Element::from_element_id(
                self.client.clone(),
                id.to_owned().into(),
            ))),
            None if value.is_null() => Ok(None),
            None => bail!("not an element: {value}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            kill_group(&mut driver);
        }
    }
}

/// Kills chromedriver on drop until the `Browser` owns it.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(mut driver) = self.0.take() {
            kill_group(&mut driver);
        }
    }
}

/// Kills chromedriver and its process group (the browser it started), then reaps it.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns `chromedriver --port=0` in its own process group, stderr (and, once the port is
/// read, stdout) to `log`; answers the child and the port it chose.
fn spawn_driver(bin: &Path, log: &Path) -> anyhow::Result<(Child, u16)> {
    use std::os::unix::process::CommandExt;
    let stderr = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut child = Command::new(bin)
        .arg("--port=0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let stdout = child.stdout.take().context("chromedriver stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let log_path = log.to_path_buf();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut sent = false;
        let mut copy = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .ok();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(copy) = copy.as_mut() {
                let _ = writeln!(copy, "{line}");
            }
            if !sent && let Some(rest) = line.split(DRIVER_PORT_MARK).nth(1) {
                let port = rest.trim_end_matches('.').trim().parse::<u16>().ok();
                let _ = tx.send(port);
                sent = true;
            }
        }
    });
    match rx.recv_timeout(DRIVER_READY) {
        Ok(Some(port)) => Ok((child, port)),
        outcome => {
            kill_group(&mut child);
            bail!(
                "chromedriver {} did not report its port ({outcome:?})\n--- chromedriver log ---\n{}",
                bin.display(),
                read_tail(log)
            )
        }
    }
}

/// Polls chromedriver's `/status` until it says it is ready.
async fn wait_driver_ready(base: &str, log: &Path) -> anyhow::Result<()> {
    let url = format!("{base}/status");
    let deadline = tokio::time::Instant::now() + DRIVER_READY;
    loop {
        let last = match http_get(&url).await {
            Ok(body) => {
                let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if status["value"]["ready"] == json!(true) {
                    return Ok(());
                }
                body
            }
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "chromedriver at {base} not ready after {DRIVER_READY:?}: {last}\n--- chromedriver log ---\n{}",
                read_tail(log)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A minimal HTTP/1.1 GET over loopback (chromedriver's `/status`), without another client:
/// reads the headers, then `Content-Length` bytes of body.
async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url::Url::parse(url)?;
    let host = url.host_str().context("host")?;
    let port = url.port().context("port")?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        stream
            .write_all(
                format!(
                    "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n",
                    url.path()
                )
                .as_bytes(),
            )
            .await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                });
                if n == 0 || length.is_some_and(|len| body.len() >= len) {
                    if !head.starts_with("HTTP/1.1 200") {
                        bail!("{head}");
                    }
                    return Ok(body.to_owned());
                }
            } else if n == 0 {
                bail!("connection closed before the end of the headers");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await?
}

/// The last 64 KiB of a log file, for failure messages.
fn read_tail(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let cut = text.len().saturating_sub(64 * 1024);
    let cut = (cut..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[cut..].to_owned()
}

/// `s` as an XPath string literal (XPath 1.0 has no escapes: `concat` when both quotes occur).
pub fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        let parts: Vec<String> = s.split('\'').map(|p| format!("'{p}'")).collect();
        format!("concat({})", parts.join(", \"'\", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as a `data:` URL.
    fn page(html: &str) -> String {
        let mut url =
            url::Url::parse("data:text/html;charset=utf-8,").unwrap_or_else(|_| unreachable!());
        url.set_path(&format!(
            "text/html;charset=utf-8,{}",
            html.replace('#', "%23")
        ));
        url.to_string()
    }

    /// The harness against pages whose faults are known: every check must see them, or the
    /// dashboard test built on it could not fail.
    #[tokio::test]
    async fn the_harness_finds_what_a_user_sees_and_the_faults_it_must_report() -> anyhow::Result<()>
    {
        let browser = Browser::start().await?;
        let inner = browser
            .js("return [window.innerWidth, window.innerHeight];", vec![])
            .await?;
        assert_eq!(inner, json!([1280, 800]), "the initial viewport");

        browser
            .goto(&page(
                r#"<h1>Form</h1>
                <label for="k">API key</label><input id="k" type="password">
                <label>Nested <input id="n"></label>
                <label><input type="checkbox" id="c"> call.started</label>
                <input id="bare" name="bare"><input type="hidden" name="h">
                <select aria-label="Pick"><option>one</option><option>two</option></select>
                <button onclick="document.getElementById('out').textContent = 'typed ' + document.getElementById('k').value">Go</button>
                <button disabled>Off</button>
                <div role="status" id="out"></div>"#,
            ))
            .await?;
        browser.wait_for_heading(1, "Form").await?;
        browser.fill("API key", "s3cret").await?;
        browser.click_button("Go").await?;
        assert_eq!(
            browser.wait_for_role("status", "typed").await?,
            "typed s3cret"
        );
        assert_eq!(
            browser
                .control("Nested")
                .await?
                .attr("id")
                .await?
                .as_deref(),
            Some("n")
        );
        browser.set_checked("call.started", true).await?;
        assert!(browser.control("call.started").await?.is_selected().await?);
        browser.select("Pick", "two").await?;
        assert_eq!(
            browser
                .control("Pick")
                .await?
                .prop("value")
                .await?
                .as_deref(),
            Some("two")
        );
        assert_eq!(
            browser.unlabelled_controls().await?,
            ["<input type=text id=bare name=bare>"]
        );
        let missing = browser
            .wait_until(Duration::from_millis(300), "nothing", || async {
                Ok(browser
                    .displayed("//button[normalize-space()='Off']")
                    .await?
                    .is_empty()
                    .then_some(()))
            })
            .await;
        assert!(missing.is_err(), "a displayed button was not found");
        assert!(browser.script_errors().await?.is_empty());
        browser.no_horizontal_scroll().await?;

        browser
            .goto(&page(
                r#"<div style="width:2000px">wide</div><script>console.error("logged"); notAFunction();</script>"#,
            ))
            .await?;
        let err = browser
            .no_horizontal_scroll()
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .unwrap_or_default()
                .contains("scrolls horizontally"),
            "{err:?}"
        );
        let errors = browser.script_errors().await?;
        let text = format!("{errors:?}");
        assert!(
            text.contains("logged") && text.contains("notAFunction"),
            "{text}"
        );

        browser.set_viewport(390, 844).await?;
        assert_eq!(
            browser.js("return window.innerWidth;", vec![]).await?,
            json!(390)
        );
        let png = browser.client().screenshot().await?;
        assert!(png.starts_with(b"\x89PNG"));
        browser.close().await
    }

    #[test]
    fn xpath_literals_quote_whatever_the_text_holds() {
        assert_eq!(xpath_literal("Sign in"), "'Sign in'");
        assert_eq!(xpath_literal("it's"), "\"it's\"");
        assert_eq!(xpath_literal(r#"a'b"c"#), r#"concat('a', "'", 'b"c')"#);
    }

    #[test]
    fn network_entries_are_not_script_errors() {
        let entry = |level: &str, source: &str| ConsoleEntry {
            level: level.into(),
            source: source.into(),
            message: String::new(),
        };
        assert!(entry("SEVERE", "javascript").is_script_error());
        assert!(entry("SEVERE", "console-api").is_script_error());
        assert!(!entry("SEVERE", "network").is_script_error());
        assert!(!entry("WARNING", "console-api").is_script_error());
    }
}
