// One subscription: its settings, signing secret, a test send and the live attempt log.

import { api, catalog, seg, withQuery } from './api.js';
import { agentsText, createdSecrets, stateBadge, typesText } from './subscriptions.js';
import { badge, busy, copyText, emptyState, field, fill, h, loading, Notices, orDash, table, time } from './ui.js';

const REFRESH_MS = 2000;
/** Attempts kept on screen (newest first). */
const SHOWN_ATTEMPTS = 200;
/** Pages of attempts read per refresh at most, so a huge log is caught up over a few ticks. */
const PAGES_PER_REFRESH = 20;

export async function subscriptionDetail(ctx, root, router, id) {
  const notices = new Notices();
  const body = h('div', { 'aria-busy': 'true' }, loading('Loading the subscription…'));
  root.append(
    h('p', { class: 'breadcrumb' }, h('a', { href: '#/subscriptions' }, '← Subscriptions')),
    h('div', { class: 'page-header' }, h('div', {}, h('h1', {}, 'Subscription'), h('p', { class: 'subtitle' }, h('code', { class: 'id' }, id)))),
    notices.el,
    body,
  );
  const flash = router.takeFlash();
  if (flash) notices.ok(flash);

  let sub;
  try {
    sub = await api('GET', `/v1/subscriptions/${seg(id)}`);
  } catch (error) {
    if (!ctx.alive) return;
    body.removeAttribute('aria-busy');
    fill(body, h('p', {}, h('a', { href: '#/subscriptions' }, 'Back to the subscriptions')));
    notices.error(error);
    return;
  }
  if (!ctx.alive) return;
  body.removeAttribute('aria-busy');

  const summary = h('div', { class: 'card' });
  const attempts = attemptsCard(ctx, id);
  const actions = h('div', { class: 'actions page-actions' });
  const drawSummary = () => {
    fill(summary,
      h('h2', { class: 'visually-hidden' }, 'Settings'),
      h(
        'dl',
        { class: 'facts' },
        fact('Endpoint URL', h('span', { class: 'url' }, sub.url)),
        fact('Event types', typesText(sub)),
        fact('Agents', agentsText(sub)),
        fact('Description', orDash(sub.description)),
        fact('State', [stateBadge(sub), sub.disabled_reason ? h('span', { class: 'muted small reason' }, `Reason: ${sub.disabled_reason}`) : null]),
        sub.rate_limit_per_s ? fact('Rate limit', `${sub.rate_limit_per_s} per second`) : null,
        fact('Created', time(sub.created_at)),
        fact('Updated', time(sub.updated_at)),
      ),
    );
    drawActions();
  };

  const drawActions = (confirming = false) => {
    const toggle = h('button', { type: 'button', class: 'button' }, sub.enabled ? 'Disable' : 'Enable');
    toggle.addEventListener('click', () =>
      busy(toggle, notices, async () => {
        const enabled = !sub.enabled;
        const updated = await api('PATCH', `/v1/subscriptions/${seg(id)}`, { enabled });
        if (!ctx.alive) return;
        sub = updated ?? { ...sub, enabled };
        drawSummary();
        notices.ok(enabled ? 'Subscription enabled' : 'Subscription disabled: it receives nothing until enabled again');
        actions.querySelector('button')?.focus();
      }),
    );
    const edit = h('a', { href: `#/subscriptions/${seg(id)}/edit`, class: 'button' }, 'Edit');
    if (!confirming) {
      const remove = h('button', { type: 'button', class: 'button button-danger' }, 'Delete');
      remove.addEventListener('click', () => {
        drawActions(true);
        actions.querySelector('.button-danger')?.focus();
      });
      fill(actions, edit, toggle, remove);
      return;
    }
    const confirm = h('button', { type: 'button', class: 'button button-danger' }, 'Confirm delete');
    const cancel = h('button', { type: 'button', class: 'button button-quiet' }, 'Cancel');
    cancel.addEventListener('click', () => {
      drawActions(false);
      actions.querySelector('.button-danger')?.focus();
    });
    confirm.addEventListener('click', () =>
      busy(confirm, notices, async () => {
        // The attempt log stops first: a read of it after the delete would be a 404.
        await attempts.stop();
        try {
          await api('DELETE', `/v1/subscriptions/${seg(id)}`);
        } catch (error) {
          attempts.resume();
          throw error;
        }
        createdSecrets.delete(id);
        if (ctx.alive) router.go('#/subscriptions', 'Subscription deleted');
      }),
    );
    fill(actions,
      h(
        'div',
        { class: 'confirm', role: 'group', 'aria-label': 'Confirm deletion' },
        h('p', {}, 'Delete this subscription? Deliveries to it stop at once; this cannot be undone.'),
        h('div', { class: 'actions' }, confirm, cancel),
      ),
    );
  };

  drawSummary();
  fill(body, actions, summary, secretCard(ctx, id), testCard(ctx, id), attempts.el);
}

function fact(term, value) {
  return h('div', { class: 'fact' }, h('dt', {}, term), h('dd', {}, value));
}

function secretCard(ctx, id) {
  const notices = new Notices();
  const content = h('div', { class: 'secret' });
  const justCreated = createdSecrets.get(id);
  createdSecrets.delete(id);

  const showMasked = () => {
    const reveal = h('button', { type: 'button', class: 'button' }, 'Reveal secret');
    reveal.addEventListener('click', () =>
      busy(reveal, notices, async () => {
        const answer = await api('GET', `/v1/subscriptions/${seg(id)}/secret`);
        if (!ctx.alive) return;
        notices.clear();
        showSecret(answer?.secret ?? '', null);
        content.querySelector('button')?.focus();
      }),
    );
    const mask = h(
      'span',
      { class: 'secret-mask' },
      h('span', { 'aria-hidden': 'true' }, '•'.repeat(28)),
      h('span', { class: 'visually-hidden' }, 'Secret hidden'),
    );
    fill(content, h('div', { class: 'secret-row' }, mask, reveal));
  };

  const showSecret = (secret, note) => {
    const copy = h('button', { type: 'button', class: 'button' }, 'Copy secret');
    copy.addEventListener('click', async () => {
      const done = await copyText(secret);
      if (!ctx.alive) return;
      if (done) notices.ok('Copied');
      else notices.error(new Error('The browser refused to copy; select the secret and copy it by hand.'));
    });
    const hide = h('button', { type: 'button', class: 'button button-quiet' }, 'Hide secret');
    hide.addEventListener('click', () => {
      notices.clear();
      showMasked();
      content.querySelector('button')?.focus();
    });
    fill(content,
      note ? h('p', { class: 'callout' }, note) : null,
      h('div', { class: 'secret-row' }, h('code', { id: 'secret-value', class: 'secret-value' }, secret), copy, hide),
    );
  };

  if (justCreated) {
    showSecret(
      justCreated,
      'This is the new subscription’s signing secret. Store it where your receiver verifies signatures (Standard Webhooks); it stays hidden from now on, and can be revealed here again.',
    );
  } else {
    showMasked();
  }

  const grace = h('input', { id: 'grace-period', type: 'number', min: '0', max: '604800', step: '1', inputmode: 'numeric', value: '86400' });
  const rotate = h('button', { type: 'button', class: 'button button-warning' }, 'Rotate secret');
  rotate.addEventListener('click', () =>
    busy(rotate, notices, async () => {
      const raw = grace.value.trim();
      const body = raw === '' ? {} : { grace_period_s: /^\d+$/.test(raw) ? Number(raw) : raw };
      const answer = await api('POST', `/v1/subscriptions/${seg(id)}/secret/rotate`, body);
      if (!ctx.alive) return;
      showSecret(answer?.secret ?? '', null);
      const seconds = body.grace_period_s ?? 86400;
      notices.ok(
        seconds > 0
          ? `Secret rotated. The previous secret keeps signing alongside it for ${seconds} s.`
          : 'Secret rotated. The previous secret no longer signs.',
      );
    }),
  );

  return h(
    'section',
    { class: 'card', 'aria-labelledby': 'secret-heading' },
    h('h2', { id: 'secret-heading' }, 'Signing secret'),
    h('p', { class: 'muted' }, 'Every delivery is signed with it (webhook-signature, HMAC-SHA256); receivers verify with it.'),
    content,
    h(
      'div',
      { class: 'rotate' },
      field('Grace period (seconds)', grace, 'After a rotation, the old secret keeps signing for this long, so receivers can switch over (at most 604800, 7 days).'),
      h('div', { class: 'actions' }, rotate),
    ),
    notices.el,
  );
}

function testCard(ctx, id) {
  const notices = new Notices();
  const select = h('select', { id: 'test-type' }, h('option', { value: 'call.started' }, 'call.started'));
  const send = h('button', { type: 'button', class: 'button button-primary' }, 'Send test event');
  const result = h('div', { id: 'test-result', class: 'test-result', 'aria-live': 'polite' });
  catalog().then(
    (types) => {
      if (!ctx.alive || !types.length) return;
      const chosen = select.value;
      fill(select, ...types.map((t) => h('option', { value: t.type, selected: t.type === chosen }, t.type)));
    },
    (error) => notices.error(error),
  );
  send.addEventListener('click', () =>
    busy(send, notices, async () => {
      notices.clear();
      fill(result, loading('Sending…'));
      let answer;
      try {
        answer = await api('POST', `/v1/subscriptions/${seg(id)}/test`, { type: select.value });
      } catch (error) {
        result.replaceChildren();
        throw error;
      }
      if (!ctx.alive) return;
      fill(result, ...testResult(answer ?? {}));
    }),
  );
  return h(
    'section',
    { class: 'card', 'aria-labelledby': 'test-heading' },
    h('h2', { id: 'test-heading' }, 'Send a test event'),
    h('p', { class: 'muted' }, 'A realistic, signed sample of the chosen type goes to the endpoint now, and you see what it answered. It is not logged as a delivery attempt.'),
    h('div', { class: 'inline-form' }, field('Test event type', select), h('div', { class: 'actions' }, send)),
    notices.el,
    result,
  );
}

function testResult(answer) {
  const answered = typeof answer.status_code === 'number';
  const ok = answer.delivered === true;
  const headline = h(
    'p',
    { class: 'test-headline' },
    answered ? badge(`Status ${answer.status_code}`, ok ? 'ok' : 'bad') : badge('No response', 'bad'),
    ' ',
    h('span', { class: 'latency' }, `Latency ${Number(answer.latency_ms ?? 0)} ms`),
    ' ',
    h('span', { class: 'muted' }, ok ? 'Delivered' : 'Not delivered'),
  );
  const parts = [headline];
  if (answer.error) parts.push(h('p', { class: 'test-error' }, h('strong', {}, 'Error: '), String(answer.error)));
  if (answered) {
    const text = typeof answer.response_body === 'string' ? answer.response_body : '';
    parts.push(h('p', { class: 'small muted' }, text ? 'Response body (first 1 KiB):' : 'The response body was empty.'));
    parts.push(h('pre', { class: 'code' }, text));
  }
  return parts;
}

function attemptsCard(ctx, id) {
  const notices = new Notices();
  const body = h('div', { 'aria-busy': 'true' }, loading('Loading attempts…'));
  const meta = h('p', { class: 'small muted attempts-meta' });
  const auto = h('input', { type: 'checkbox', id: 'auto-refresh', checked: true });
  // Attempts before `stableAfter` never change; the last page (`tail`) is read again each time.
  const log = { stable: [], stableAfter: null, tail: [], drawn: null, trimmed: false };
  let timer = null;
  let inFlight = null;
  let stopped = false;

  function refresh() {
    if (inFlight || stopped) return inFlight;
    inFlight = load();
    return inFlight;
  }

  async function load() {
    try {
      let after = log.stableAfter;
      const pages = [];
      for (let i = 0; i < PAGES_PER_REFRESH; i += 1) {
        const page = await api('GET', withQuery(`/v1/subscriptions/${seg(id)}/attempts`, { limit: 1000, after }));
        if (!ctx.alive) return;
        const data = page?.data ?? [];
        const next = page?.next_cursor ?? null;
        pages.push({ data, after, next });
        if (!next) break;
        after = next;
      }
      // Every page but the last is complete: fold it into the stable part.
      const last = pages[pages.length - 1];
      for (const page of pages.slice(0, -1)) {
        log.stable.push(...page.data);
        log.stableAfter = page.next;
      }
      log.tail = last.next ? [] : last.data;
      if (last.next) {
        log.stable.push(...last.data);
        log.stableAfter = last.next;
      }
      if (log.stable.length > SHOWN_ATTEMPTS) {
        log.stable.splice(0, log.stable.length - SHOWN_ATTEMPTS);
        log.trimmed = true;
      }
      notices.clearError();
      draw();
    } catch (error) {
      if (ctx.alive) notices.error(error);
    } finally {
      inFlight = null;
      body.removeAttribute('aria-busy');
      schedule();
    }
  }

  function schedule() {
    if (timer !== null) ctx.cancel(timer);
    timer = null;
    if (auto.checked && ctx.alive && !stopped) timer = ctx.later(REFRESH_MS, refresh);
  }

  /** No more polling; resolves once a read under way is done (before a delete, say). */
  async function stop() {
    stopped = true;
    schedule();
    await inFlight;
  }

  function resume() {
    stopped = false;
    refresh();
  }

  function draw() {
    const all = log.stable.concat(log.tail);
    const shown = all.slice(-SHOWN_ATTEMPTS).reverse();
    const key = JSON.stringify(shown);
    meta.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    if (key === log.drawn) return;
    log.drawn = key;
    if (!shown.length) {
      fill(body, emptyState('No attempts yet.', h('p', {}, 'Each delivery attempt to this endpoint shows up here, newest first.')));
      return;
    }
    fill(body,
      table(
        'Delivery attempts',
        ['Time', 'Event', 'Attempt', 'Outcome', 'Status', 'Latency', 'Error'],
        shown.map((a) => [
          time(a.at),
          h('code', { class: 'id' }, a.event_id ?? ''),
          String(a.attempt ?? ''),
          a.outcome === 'succeeded' ? badge('succeeded', 'ok') : badge(String(a.outcome ?? 'failed'), 'bad'),
          orDash(a.status_code),
          typeof a.latency_ms === 'number' ? `${a.latency_ms} ms` : orDash(null),
          a.error ? h('span', { class: 'error-text' }, a.error) : orDash(null),
        ]),
      ),
      log.trimmed || all.length > SHOWN_ATTEMPTS ? h('p', { class: 'small muted' }, `The latest ${SHOWN_ATTEMPTS} attempts.`) : null,
    );
  }

  auto.addEventListener('change', () => {
    if (auto.checked) refresh();
    else schedule();
  });
  refresh();

  const el = h(
    'section',
    { class: 'card', 'aria-labelledby': 'attempts-heading' },
    h(
      'div',
      { class: 'card-header' },
      h('h2', { id: 'attempts-heading' }, 'Delivery attempts'),
      h('div', { class: 'check auto-refresh' }, auto, h('label', { for: 'auto-refresh' }, 'Auto-refresh')),
    ),
    meta,
    notices.el,
    body,
  );
  return { el, stop, resume };
}
