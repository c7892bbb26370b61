//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/chromium.sh`) over WebDriver, against the whole
//! system in-process and a receiver on loopback that verifies every signature with the
//! independent `standardwebhooks` crate.
//!
//! The test acts like a user: it finds controls by the text of their labels, buttons and links
//! by their text, pages by their headings, results by their `role="alert"`/`role="status"`
//! regions (the DOM contract the dashboard is built to). On every page it visits it checks that
//! every control has a label and that no script error reached the console; at 390 px wide it
//! checks the pages do not scroll sideways. The screenshots it takes are the README's
//! (`docs/screenshots/`).

use std::collections::BTreeSet;
use std::time::Duration;

use fantoccini::key::Key;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::browser::{WAIT, xpath_literal};
use testkit::{Browser, Received, TestReceiver, eventually};

use crate::helpers::*;

/// Checks every page visited must pass: labelled controls, no script errors.
async fn check_page(browser: &Browser, page: &str) -> anyhow::Result<()> {
    let unlabelled = browser.unlabelled_controls().await?;
    anyhow::ensure!(
        unlabelled.is_empty(),
        "{page}: controls without a label: {unlabelled:?}"
    );
    let errors = browser.script_errors().await?;
    anyhow::ensure!(
        errors.is_empty(),
        "{page}: script errors in the console: {errors:#?}"
    );
    Ok(())
}

/// At desktop width (1280×800) every table fits its card: no column, and no row's button, is
/// hidden behind a horizontal scroll (on a phone they may scroll; see `no_horizontal_scroll`).
async fn tables_fit(browser: &Browser, page: &str) -> anyhow::Result<()> {
    let overflowing = browser
        .js(
            r#"return [...document.querySelectorAll('.table-wrap')]
                .filter((w) => w.getClientRects().length && w.scrollWidth > w.clientWidth + 1)
                .map((w) => `${w.getAttribute('aria-label') ?? 'a table'}: ${w.scrollWidth} px in ${w.clientWidth} px`);"#,
            vec![],
        )
        .await?;
    anyhow::ensure!(
        overflowing.as_array().is_some_and(|a| a.is_empty()),
        "{page}: tables wider than their card at 1280 px: {overflowing}"
    );
    Ok(())
}

/// The next request to the receiver, whose signature must verify against `secret`.
async fn delivery(receiver: &TestReceiver, secret: &str, what: &str) -> Received {
    let got = receiver
        .recv_within(SOON)
        .await
        .unwrap_or_else(|| panic!("no request reached the receiver: {what}"));
    got.verify(secret)
        .unwrap_or_else(|e| panic!("{what}: {e}; headers {:?}", got.headers));
    got
}

/// The `webhook-id` of a request.
fn webhook_id(got: &Received) -> String {
    got.header("webhook-id").unwrap_or_default().to_owned()
}

/// The text of `#secret-value` once it shows a `whsec_` secret different from `not`.
async fn shown_secret(browser: &Browser, not: Option<&str>) -> anyhow::Result<String> {
    browser
        .wait_until(WAIT, "a secret in #secret-value", || async {
            let shown = browser.displayed("//*[@id='secret-value']").await?;
            let Some(el) = shown.first() else {
                return Ok(None);
            };
            let text = el.text().await?.trim().to_owned();
            Ok((text.starts_with("whsec_") && Some(text.as_str()) != not).then_some(text))
        })
        .await
}

/// The secret the API reports for `sub`.
async fn api_secret(sys: &System, key: &str, sub: &str) -> String {
    let (status, body) = sys
        .get(&format!("/v1/subscriptions/{sub}/secret"), key)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["secret"].as_str().expect("secret").to_owned()
}

/// Types a moment `offset_s` seconds from now into the `datetime-local` control labelled
/// `label`, the way a user does in an en-US Chromium (month, day, year, Tab, time, AM/PM; the
/// browser's own clock and time zone), and checks the control took it.
async fn type_local_time(browser: &Browser, label: &str, offset_s: i64) -> anyhow::Result<()> {
    let parts = browser
        .js(
            r#"const d = new Date(Date.now() + arguments[0] * 1000);
               const p = (n) => String(n).padStart(2, '0');
               const h = d.getHours();
               return [
                 p(d.getMonth() + 1) + p(d.getDate()) + d.getFullYear() + '\t'
                   + p(h % 12 || 12) + p(d.getMinutes()) + p(d.getSeconds()) + (h < 12 ? 'AM' : 'PM'),
                 d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + 'T'
                   + p(h) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()),
               ];"#,
            vec![json!(offset_s)],
        )
        .await?;
    let keys = parts[0].as_str().unwrap_or_default();
    let expected = parts[1].as_str().unwrap_or_default();
    let input = browser.control(label).await?;
    input.click().await?;
    input.send_keys(keys).await?;
    let value = input.prop("value").await?.unwrap_or_default();
    anyhow::ensure!(
        value == expected,
        "{label}: typed {keys:?}, the control holds {value:?}, expected {expected:?}"
    );
    Ok(())
}

/// The table row (`tr`) holding `text` in one of its cells.
fn row_with(text: &str) -> String {
    format!(
        "//tr[td[contains(normalize-space(), {})]]",
        xpath_literal(text)
    )
}

/// Waits for the row holding `text`, and answers its visible text.
async fn row_text(browser: &Browser, text: &str) -> anyhow::Result<String> {
    Ok(browser
        .wait_for_xpath(&row_with(text))
        .await?
        .text()
        .await?)
}

/// Scrolls the element at `xpath` to the top (`start`) or the bottom (`end`) of the viewport,
/// with a margin, for a screenshot of it.
async fn scroll_to(browser: &Browser, xpath: &str, block: &str) -> anyhow::Result<()> {
    let element = browser.wait_for_xpath(xpath).await?;
    browser
        .client()
        .execute(
            "arguments[0].scrollIntoView({block: arguments[1]});
             window.scrollBy(0, arguments[1] === 'end' ? 24 : -16);",
            vec![serde_json::to_value(&element)?, json!(block)],
        )
        .await?;
    Ok(())
}

/// The whole product flow of issue 9, one user session: sign in, create a subscription (after
/// a refused URL), copy its secret, send a test, watch the attempt appear, replay one event and
/// a time range, redrive dead letters one and all, read the catalog, rotate the secret, disable,
/// enable, edit and delete. Every step is checked against the API and the receiver too.
#[tokio::test]
async fn the_dashboard_runs_the_whole_product_flow_in_a_real_browser() -> anyhow::Result<()> {
    let sys = System::start().await;
    let key = sys.tenant_key("dashboard").await;
    let receiver = TestReceiver::start(vec![]).await?;
    let browser = Browser::start().await?;

    // --- Sign in -------------------------------------------------------------------------
    browser.goto(&sys.url("/dashboard")).await?;
    browser.wait_for_heading(1, "Sign in").await?;
    check_page(&browser, "sign-in").await?;
    browser.screenshot("signin").await?;

    browser.fill("API key", "owk_notakey_notasecret").await?;
    browser.click_button("Sign in").await?;
    let refused = browser.wait_for_role("alert", "401").await?;
    assert!(refused.contains("Unauthorized"), "{refused}");
    browser.wait_for_heading(1, "Sign in").await?;
    let stored = browser
        .js("return sessionStorage.getItem('owh.apiKey');", vec![])
        .await?;
    assert_eq!(stored, Value::Null, "a refused key was stored");

    // By keyboard: type the key and press Enter.
    let input = browser.control("API key").await?;
    input.clear().await?;
    input.send_keys(&format!("{key}{}", Key::Enter)).await?;
    browser.wait_for_heading(1, "Subscriptions").await?;
    browser.wait_for_text("No subscriptions yet").await?;
    let nav = browser
        .wait_for_xpath("//nav[@aria-label='Main']")
        .await?
        .text()
        .await?;
    for item in ["Subscriptions", "Events", "Dead letters", "Event types"] {
        assert!(
            nav.contains(item),
            "the main navigation lacks {item}: {nav}"
        );
    }
    browser.button("Sign out").await?;
    let storage = browser
        .js(
            "return [sessionStorage.getItem('owh.apiKey'), localStorage.length];",
            vec![],
        )
        .await?;
    assert_eq!(
        storage,
        json!([key, 0]),
        "the key lives in sessionStorage only"
    );
    check_page(&browser, "subscriptions (empty)").await?;
    browser.screenshot("subscriptions-empty").await?;

    // --- New subscription: refused, then created -----------------------------------------
    // Keyboard again: focus the link and press Enter.
    let new = browser.link("New subscription").await?;
    new.send_keys(&Key::Enter.to_string()).await?;
    browser.wait_for_heading(1, "New subscription").await?;
    check_page(&browser, "new subscription").await?;
    let metadata = "http://169.254.169.254/hook";
    browser.fill("Endpoint URL", metadata).await?;
    browser.set_checked("call.started", true).await?;
    browser.click_button("Create subscription").await?;
    let why = browser.wait_for_role("alert", "non-public address").await?;
    assert!(why.contains("169.254.169.254"), "{why}");
    assert_eq!(
        browser.value("Endpoint URL").await?,
        metadata,
        "the refused URL is kept for correction"
    );
    browser.wait_for_heading(1, "New subscription").await?;
    check_page(&browser, "new subscription (refused)").await?;
    scroll_to(
        &browser,
        "//button[normalize-space()='Create subscription']",
        "end",
    )
    .await?;
    browser.screenshot("subscription-refused").await?;

    browser.fill("Endpoint URL", &receiver.url()).await?;
    browser.set_checked("call.started", true).await?;
    browser.set_checked("call.ended", true).await?;
    browser.fill("Agent filter", "agent_a").await?;
    browser
        .fill("Description", "Call events of agent_a, for the CRM")
        .await?;
    browser.click_button("Create subscription").await?;
    browser.wait_for_heading(1, "Subscription").await?;
    let sub = browser
        .wait_until(WAIT, "the subscription id in a <code>", || async {
            for code in browser.displayed("//code").await? {
                let text = code.text().await?;
                if text.starts_with("sub_") {
                    return Ok(Some(text));
                }
            }
            Ok(None)
        })
        .await?;
    let (status, created) = sys.get(&format!("/v1/subscriptions/{sub}"), &key).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["url"], json!(receiver.url()));
    assert_eq!(
        created["event_types"]
            .as_array()
            .expect("types")
            .iter()
            .filter_map(Value::as_str)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["call.started", "call.ended"])
    );
    assert_eq!(created["agent_ids"], json!(["agent_a"]));
    assert_eq!(
        created["description"],
        json!("Call events of agent_a, for the CRM")
    );
    assert_eq!(created["enabled"], json!(true));
    // The create response's secret, shown once.
    let first_shown = shown_secret(&browser, None).await?;
    browser.wait_for_text("Enabled").await?;
    check_page(&browser, "subscription detail (created)").await?;
    browser.screenshot("subscription-detail").await?;

    // --- The list, then the detail page again: reveal and copy the secret -----------------
    browser.click_link("Subscriptions").await?;
    browser.wait_for_heading(1, "Subscriptions").await?;
    let row = row_text(&browser, &receiver.url()).await?;
    for cell in ["call.started", "call.ended", "agent_a", "Enabled"] {
        assert!(row.contains(cell), "the list row lacks {cell}: {row}");
    }
    check_page(&browser, "subscriptions").await?;
    browser.click_link(&receiver.url()).await?;
    browser.wait_for_heading(1, "Subscription").await?;
    assert!(
        browser
            .displayed("//*[@id='secret-value']")
            .await?
            .is_empty(),
        "the secret is shown without being revealed"
    );
    browser.click_button("Reveal secret").await?;
    let secret = shown_secret(&browser, None).await?;
    assert_eq!(
        secret, first_shown,
        "the revealed secret is the created one"
    );
    assert_eq!(
        secret,
        api_secret(&sys, &key, &sub).await,
        "the page shows the API's secret"
    );
    let origin = sys.url("");
    browser
        .cdp(
            "Browser.grantPermissions",
            json!({"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}),
        )
        .await?;
    browser.click_button("Copy secret").await?;
    browser.wait_for_role("status", "Copied").await?;
    let clipboard = browser
        .client()
        .execute_async(
            "const done = arguments[arguments.length - 1];
             navigator.clipboard.readText().then(done, (e) => done('error: ' + e));",
            vec![],
        )
        .await?;
    assert_eq!(clipboard, json!(secret), "the clipboard holds the secret");
    check_page(&browser, "subscription detail (secret revealed)").await?;

    // --- Test send -----------------------------------------------------------------------
    browser.select("Test event type", "call.started").await?;
    browser.click_button("Send test event").await?;
    let result = browser
        .wait_until(WAIT, "the test result", || async {
            let text = browser.wait_for_id("test-result").await?.text().await?;
            Ok(text.contains("Status").then_some(text))
        })
        .await?;
    assert!(result.contains("Status 200"), "{result}");
    assert!(
        regex::Regex::new(r"Latency \d+ ms")?.is_match(&result),
        "{result}"
    );
    let test = delivery(&receiver, &secret, "the test send").await;
    // A test send is not a delivery attempt.
    browser.wait_for_text("No attempts yet").await?;
    assert_eq!(test.json()["type"], json!("call.started"));
    check_page(&browser, "subscription detail (test sent)").await?;
    scroll_to(
        &browser,
        "//h2[normalize-space()='Send a test event']",
        "start",
    )
    .await?;
    browser.screenshot("test-send").await?;

    // --- A real event: the attempt appears without a reload -----------------------------
    assert!(
        browser.control("Auto-refresh").await?.is_selected().await?,
        "auto-refresh is on by default"
    );
    browser.js("window.__sameDocument = true;", vec![]).await?;
    let first = sys.send_event(&key, event("call.started", "agent_a")).await;
    let got = delivery(&receiver, &secret, "the first event").await;
    assert_eq!(webhook_id(&got), first);
    let attempt = browser
        .wait_until(WAIT, "the attempt row", || async {
            for row in browser.displayed(&row_with(&first)).await? {
                let text = row.text().await?;
                if text.contains("succeeded") {
                    return Ok(Some(text));
                }
            }
            Ok(None)
        })
        .await?;
    assert!(attempt.contains("200"), "{attempt}");
    assert_eq!(
        browser.js("return window.__sameDocument;", vec![]).await?,
        json!(true),
        "the page was reloaded"
    );
    check_page(&browser, "subscription detail (attempts)").await?;
    scroll_to(
        &browser,
        "//h2[normalize-space()='Delivery attempts']",
        "start",
    )
    .await?;
    browser.screenshot("attempts").await?;
    tables_fit(&browser, "attempts").await?;

    // --- Events: replay one, replay a range ----------------------------------------------
    browser.click_link("Events").await?;
    browser.wait_for_heading(1, "Events").await?;
    let listed = row_text(&browser, &first).await?;
    assert!(
        listed.contains("call.started") && listed.contains("agent_a"),
        "{listed}"
    );
    check_page(&browser, "events").await?;
    browser.screenshot("events").await?;
    tables_fit(&browser, "events").await?;
    browser
        .wait_for_xpath(&format!(
            "{}//button[normalize-space()='Replay']",
            row_with(&first)
        ))
        .await?
        .click()
        .await?;
    browser
        .wait_for_role("status", "Replayed to 1 subscription(s)")
        .await?;
    let replayed = delivery(&receiver, &secret, "the replayed event").await;
    assert_eq!(
        webhook_id(&replayed),
        first,
        "a replay keeps the webhook-id"
    );

    browser.wait_for_heading(2, "Replay a time range").await?;
    browser
        .control("Subscription")
        .await?
        .select_by_value(&sub)
        .await?;
    type_local_time(&browser, "From", -3600).await?;
    type_local_time(&browser, "To", 3600).await?;
    browser.click_button("Replay range").await?;
    let said = browser.wait_for_role("status", "event(s)").await?;
    let n: usize = regex::Regex::new(r"Replayed (\d+) event\(s\)")?
        .captures(&said)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no count in {said:?}"));
    assert_eq!(n, 1, "one event was accepted in the range: {said}");
    let again = delivery(&receiver, &secret, "the range replay").await;
    assert_eq!(webhook_id(&again), first);
    check_page(&browser, "events (replayed)").await?;

    // --- Dead letters: two refused deliveries, redriven one and then all ------------------
    receiver.answer_after_script(400)?;
    let dead_a = sys.send_event(&key, event("call.ended", "agent_a")).await;
    let dead_b = sys.send_event(&key, event("call.started", "agent_a")).await;
    let mut refused_ids = BTreeSet::new();
    for _ in 0..2 {
        let got = delivery(&receiver, &secret, "a refused delivery").await;
        assert_eq!(got.status.as_u16(), 400);
        refused_ids.insert(webhook_id(&got));
    }
    assert_eq!(
        refused_ids,
        BTreeSet::from([dead_a.clone(), dead_b.clone()])
    );
    browser.click_link("Dead letters").await?;
    browser.wait_for_heading(1, "Dead letters").await?;
    // Dead-lettering follows the refusal by a moment: reload until both rows are there.
    browser
        .wait_until(WAIT, "both dead letters listed", || async {
            let text = browser.visible_text().await?;
            if text.contains(&dead_a) && text.contains(&dead_b) {
                return Ok(Some(()));
            }
            browser.client().refresh().await?;
            browser.wait_for_heading(1, "Dead letters").await?;
            Ok(None)
        })
        .await?;
    for id in [&dead_a, &dead_b] {
        let row = row_text(&browser, id).await?;
        assert!(
            row.contains("permanent_failure") && row.contains("400"),
            "{row}"
        );
    }
    check_page(&browser, "dead letters").await?;
    browser.screenshot("dead-letters").await?;
    tables_fit(&browser, "dead letters").await?;

    receiver.answer_after_script(200)?;
    browser
        .wait_for_xpath(&format!(
            "{}//button[normalize-space()='Redrive']",
            row_with(&dead_a)
        ))
        .await?
        .click()
        .await?;
    browser.wait_for_role("status", "Redriven").await?;
    let redriven = delivery(&receiver, &secret, "the redriven dead letter").await;
    assert_eq!(webhook_id(&redriven), dead_a);
    assert_eq!(redriven.header("webhook-attempt"), Some("1"));
    browser
        .wait_until(WAIT, "the redriven row to go", || async {
            Ok(browser
                .displayed(&row_with(&dead_a))
                .await?
                .is_empty()
                .then_some(()))
        })
        .await?;
    row_text(&browser, &dead_b).await?;
    browser.click_button("Redrive all").await?;
    browser.wait_for_text("No dead letters").await?;
    let rest = delivery(&receiver, &secret, "redrive all").await;
    assert_eq!(webhook_id(&rest), dead_b);
    let (status, left) = sys
        .get(&format!("/v1/dead-letters?subscription_id={sub}"), &key)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(left["data"], json!([]), "{left}");
    check_page(&browser, "dead letters (redriven)").await?;

    // --- Event types ---------------------------------------------------------------------
    browser.click_link("Event types").await?;
    browser.wait_for_heading(1, "Event types").await?;
    for spec in proto::catalog::all() {
        browser.wait_for_heading(2, spec.name).await?;
    }
    let pres = browser
        .displayed("//h2[normalize-space()='call.started']/ancestor::section[1]//pre")
        .await?;
    assert_eq!(pres.len(), 2, "call.started: a schema and an example");
    let schema: Value = serde_json::from_str(&pres[0].text().await?)?;
    let example: Value = serde_json::from_str(&pres[1].text().await?)?;
    assert_eq!(
        schema,
        proto::catalog::schema(proto::catalog::find("call.started").expect("type"))
    );
    assert!(example.is_object(), "{example}");
    check_page(&browser, "event types").await?;
    browser.screenshot("event-types").await?;

    // --- Rotate, disable, enable ---------------------------------------------------------
    browser.click_link("Subscriptions").await?;
    browser.wait_for_heading(1, "Subscriptions").await?;
    browser.click_link(&receiver.url()).await?;
    browser.wait_for_heading(1, "Subscription").await?;
    browser.fill("Grace period (seconds)", "60").await?;
    browser.click_button("Rotate secret").await?;
    let rotated = shown_secret(&browser, Some(&secret)).await?;
    browser.wait_for_role("status", "rotated").await?;
    assert_eq!(rotated, api_secret(&sys, &key, &sub).await);
    // Deliveries are signed with the new secret (once the dispatchers have it) and, during the
    // grace period, the old one too.
    let signed = eventually(SOON, "a delivery signed with the new secret", || async {
        sys.send_event(&key, event("call.started", "agent_a")).await;
        let got = receiver.recv_within(Duration::from_secs(2)).await?;
        got.verify(&rotated).is_ok().then_some(got)
    })
    .await?;
    signed
        .verify(&secret)
        .expect("the old secret still signs during the grace period");
    check_page(&browser, "subscription detail (rotated)").await?;

    browser.click_button("Disable").await?;
    browser.button("Enable").await?;
    browser.wait_for_text("Disabled").await?;
    let (_, state) = sys.get(&format!("/v1/subscriptions/{sub}"), &key).await;
    assert_eq!(state["enabled"], json!(false), "{state}");
    browser.click_button("Enable").await?;
    browser.button("Disable").await?;
    browser.wait_for_text("Enabled").await?;
    let (_, state) = sys.get(&format!("/v1/subscriptions/{sub}"), &key).await;
    assert_eq!(state["enabled"], json!(true), "{state}");
    check_page(&browser, "subscription detail (enabled again)").await?;

    // --- Edit ----------------------------------------------------------------------------
    browser.click_link("Edit").await?;
    browser.wait_for_heading(1, "Edit subscription").await?;
    assert_eq!(browser.value("Endpoint URL").await?, receiver.url());
    assert_eq!(browser.value("Agent filter").await?, "agent_a");
    assert!(browser.control("call.ended").await?.is_selected().await?);
    check_page(&browser, "edit subscription").await?;
    browser
        .fill("Description", "Edited in the dashboard")
        .await?;
    browser.click_button("Save changes").await?;
    browser.wait_for_heading(1, "Subscription").await?;
    browser.wait_for_text("Edited in the dashboard").await?;
    let (_, edited) = sys.get(&format!("/v1/subscriptions/{sub}"), &key).await;
    assert_eq!(edited["description"], json!("Edited in the dashboard"));
    assert_eq!(edited["agent_ids"], json!(["agent_a"]), "{edited}");
    assert_eq!(edited["url"], json!(receiver.url()));

    // --- A phone's width -----------------------------------------------------------------
    browser.set_viewport(390, 844).await?;
    browser.click_link("Subscriptions").await?;
    browser.wait_for_heading(1, "Subscriptions").await?;
    row_text(&browser, &receiver.url()).await?;
    browser.no_horizontal_scroll().await?;
    check_page(&browser, "subscriptions (phone)").await?;
    browser.screenshot("phone-subscriptions").await?;
    browser.click_link(&receiver.url()).await?;
    browser.wait_for_heading(1, "Subscription").await?;
    browser.wait_for_heading(2, "Delivery attempts").await?;
    row_text(&browser, &first).await?;
    browser.no_horizontal_scroll().await?;
    check_page(&browser, "subscription detail (phone)").await?;
    browser.screenshot("phone-detail").await?;
    browser.click_link("Events").await?;
    browser.wait_for_heading(1, "Events").await?;
    row_text(&browser, &first).await?;
    browser.no_horizontal_scroll().await?;
    check_page(&browser, "events (phone)").await?;
    browser.click_link("Dead letters").await?;
    browser.wait_for_heading(1, "Dead letters").await?;
    browser.wait_for_text("No dead letters").await?;
    browser.no_horizontal_scroll().await?;
    browser.click_link("Event types").await?;
    browser.wait_for_heading(2, "call.started").await?;
    browser.no_horizontal_scroll().await?;
    browser.set_viewport(1280, 800).await?;

    // --- Delete --------------------------------------------------------------------------
    browser.click_link("Subscriptions").await?;
    browser.wait_for_heading(1, "Subscriptions").await?;
    browser.click_link(&receiver.url()).await?;
    browser.wait_for_heading(1, "Subscription").await?;
    browser.click_button("Delete").await?;
    browser.click_button("Confirm delete").await?;
    browser.wait_for_heading(1, "Subscriptions").await?;
    browser.wait_for_text("No subscriptions yet").await?;
    let (status, _) = sys.get(&format!("/v1/subscriptions/{sub}"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    check_page(&browser, "subscriptions (after delete)").await?;

    // Sign out: back to the sign-in page, the key gone.
    browser.click_button("Sign out").await?;
    browser.wait_for_heading(1, "Sign in").await?;
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('owh.apiKey');", vec![])
            .await?,
        Value::Null
    );
    check_page(&browser, "sign-in (signed out)").await?;

    // The only failed loads are the two the test provoked: the wrong key's 401 and the
    // refused URL's 422. Anything else (a missing asset, a failing API call) is a defect.
    let failed_loads: Vec<_> = browser
        .console()
        .await?
        .into_iter()
        .filter(|e| e.source == "network")
        .collect();
    assert_eq!(failed_loads.len(), 2, "{failed_loads:#?}");
    assert!(
        failed_loads[0].message.contains("/v1/")
            && failed_loads[0].message.contains("status of 401"),
        "{failed_loads:#?}"
    );
    assert!(
        failed_loads[1].message.contains("/v1/subscriptions")
            && failed_loads[1].message.contains("status of 422"),
        "{failed_loads:#?}"
    );
    browser.close().await?;
    Ok(())
}
