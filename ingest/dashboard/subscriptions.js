// Subscriptions: the list, and the create / edit form.

import { api, catalog, seg, withQuery } from './api.js';
import { badge, busy, emptyState, field, fill, h, loading, Notices, table } from './ui.js';

/** Signing secrets from create responses, shown once on the new subscription's page. */
export const createdSecrets = new Map();

export function agentsText(sub) {
  return Array.isArray(sub.agent_ids) && sub.agent_ids.length ? sub.agent_ids.join(', ') : 'all agents';
}

export function typesText(sub) {
  return Array.isArray(sub.event_types) ? sub.event_types.join(', ') : '';
}

export function stateBadge(sub) {
  return sub.enabled ? badge('Enabled', 'ok') : badge('Disabled', 'off');
}

export function subscriptionList(ctx, root, router) {
  const notices = new Notices();
  const body = h('div', { 'aria-busy': 'true' }, loading('Loading subscriptions…'));
  root.append(
    h(
      'div',
      { class: 'page-header' },
      h('div', {}, h('h1', {}, 'Subscriptions'), h('p', { class: 'lead' }, 'Endpoints that receive this tenant’s events, signed.')),
      h('a', { href: '#/subscriptions/new', class: 'button button-primary' }, 'New subscription'),
    ),
    notices.el,
    body,
  );
  const flash = router.takeFlash();
  if (flash) notices.ok(flash);

  const rows = [];
  let after = null;
  const more = h('button', { type: 'button', class: 'button' }, 'Load more');
  more.addEventListener('click', () => busy(more, notices, loadPage));

  async function loadPage() {
    const page = await api('GET', withQuery('/v1/subscriptions', { limit: 100, after }));
    if (!ctx.alive) return;
    rows.push(...(page?.data ?? []));
    after = page?.next_cursor ?? null;
    draw();
  }

  function draw() {
    body.removeAttribute('aria-busy');
    if (!rows.length) {
      fill(body,
        emptyState(
          'No subscriptions yet.',
          h('p', {}, 'A subscription sends the events you choose to an HTTPS endpoint of yours, signed with its own secret.'),
          h('a', { href: '#/subscriptions/new', class: 'button' }, 'Create the first subscription'),
        ),
      );
      return;
    }
    fill(body,
      table(
        'Subscriptions',
        ['Endpoint', 'Event types', 'Agents', 'State'],
        rows.map((sub) => [
          h(
            'div',
            { class: 'endpoint-cell' },
            h('a', { href: `#/subscriptions/${seg(sub.id)}`, class: 'url' }, sub.url),
            sub.description ? h('div', { class: 'muted small' }, sub.description) : null,
          ),
          typesText(sub),
          agentsText(sub),
          stateBadge(sub),
        ]),
      ),
      after ? h('div', { class: 'actions' }, more) : null,
    );
  }

  return loadPage().catch((error) => {
    body.removeAttribute('aria-busy');
    body.replaceChildren();
    notices.error(error);
  });
}

/** The form: `id` null creates, otherwise edits that subscription. */
export async function subscriptionForm(ctx, root, router, id) {
  const editing = id !== null;
  const notices = new Notices();
  const body = h('div', { 'aria-busy': 'true' }, loading());
  root.append(
    h(
      'p',
      { class: 'breadcrumb' },
      h('a', { href: editing ? `#/subscriptions/${seg(id)}` : '#/subscriptions' }, editing ? '← Back to the subscription' : '← Subscriptions'),
    ),
    h('h1', {}, editing ? 'Edit subscription' : 'New subscription'),
    body,
  );

  let types;
  let sub = null;
  try {
    [types, sub] = await Promise.all([
      catalog(),
      editing ? api('GET', `/v1/subscriptions/${seg(id)}`) : Promise.resolve(null),
    ]);
  } catch (error) {
    if (!ctx.alive) return;
    body.removeAttribute('aria-busy');
    fill(body, notices.el);
    notices.error(error);
    return;
  }
  if (!ctx.alive) return;
  body.removeAttribute('aria-busy');

  const url = h('input', {
    id: 'sub-url',
    name: 'url',
    type: 'url',
    inputmode: 'url',
    autocomplete: 'off',
    spellcheck: 'false',
    placeholder: 'https://example.com/webhooks',
    value: sub?.url ?? '',
  });
  const chosen = new Set(Array.isArray(sub?.event_types) ? sub.event_types : []);
  const names = types.map((t) => t.type);
  // Patterns a subscription may hold besides the catalog's names (`call.*`), kept as choices.
  const patterns = [...chosen].filter((t) => t !== '*' && !names.includes(t));
  const boxes = [];
  const box = (value, labelText, hint) => {
    const input = h('input', { type: 'checkbox', id: `type-${boxes.length}`, name: 'event_types', value, checked: chosen.has(value) });
    boxes.push(input);
    return h(
      'div',
      { class: 'check' },
      input,
      h('label', { for: input.id }, labelText),
      hint ? h('span', { class: 'muted small check-hint' }, hint) : null,
    );
  };
  const fieldset = h(
    'fieldset',
    { class: 'types' },
    h('legend', {}, 'Event types'),
    h('div', { class: 'check-all' }, box('*', 'All event types (*)')),
    h(
      'div',
      { class: 'check-grid' },
      names.map((name) => box(name, name)),
      patterns.map((p) => box(p, p)),
    ),
  );
  const agents = h('input', {
    id: 'sub-agents',
    name: 'agent_ids',
    type: 'text',
    autocomplete: 'off',
    spellcheck: 'false',
    placeholder: 'agent_1, agent_2',
    value: Array.isArray(sub?.agent_ids) ? sub.agent_ids.join(', ') : '',
  });
  const description = h('input', {
    id: 'sub-description',
    name: 'description',
    type: 'text',
    autocomplete: 'off',
    maxlength: '1024',
    value: sub?.description ?? '',
  });
  const submit = h('button', { type: 'submit', class: 'button button-primary' }, editing ? 'Save changes' : 'Create subscription');
  // The server is the judge of every field (it says why a URL is refused), so no browser checks.
  const form = h(
    'form',
    { class: 'card form', novalidate: true },
    field('Endpoint URL', url, 'Where events are POSTed: an https:// URL on a public address (the system refuses others and says why).'),
    fieldset,
    field('Agent filter', agents, 'Comma-separated agent ids. Empty: events of all agents.'),
    field('Description', description, 'Optional, for you: what this endpoint is.'),
    notices.el,
    h(
      'div',
      { class: 'actions' },
      submit,
      h('a', { href: editing ? `#/subscriptions/${seg(id)}` : '#/subscriptions', class: 'button button-quiet' }, 'Cancel'),
    ),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(submit, notices, async () => {
      notices.clear();
      const agentIds = agents.value
        .split(/[\s,]+/)
        .map((a) => a.trim())
        .filter(Boolean);
      const payload = {
        url: url.value.trim(),
        event_types: boxes.filter((b) => b.checked).map((b) => b.value),
      };
      if (editing) {
        payload.agent_ids = agentIds.length ? agentIds : null;
        payload.description = description.value;
        const saved = await api('PATCH', `/v1/subscriptions/${seg(id)}`, payload);
        if (ctx.alive) router.go(`#/subscriptions/${seg(saved?.id ?? id)}`, 'Changes saved');
      } else {
        if (agentIds.length) payload.agent_ids = agentIds;
        if (description.value.trim()) payload.description = description.value;
        const created = await api('POST', '/v1/subscriptions', payload);
        if (created?.secret) createdSecrets.set(created.id, created.secret);
        if (ctx.alive) router.go(`#/subscriptions/${seg(created.id)}`, 'Subscription created');
      }
    });
  });
  fill(body, form);
  if (!editing) url.focus();
}
