// Events: the tenant's feed (acceptance order) with filters, replay per event and per time range.

import { allSubscriptions, api, catalog, seg, withQuery } from './api.js';
import { busy, emptyState, field, fill, h, json, loading, Notices, table, time, uid } from './ui.js';

const PAGE_SIZE = 100;

export function eventsPage(ctx, root) {
  const notices = new Notices();
  const type = h('select', { id: 'events-type', name: 'type' }, h('option', { value: '' }, 'Any type'));
  const agent = h('input', { id: 'events-agent', name: 'agent_id', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'agent_demo' });
  const apply = h('button', { type: 'submit', class: 'button' }, 'Apply filters');
  const filters = h(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter events', novalidate: true },
    field('Type', type),
    field('Agent', agent),
    h('div', { class: 'actions' }, apply),
  );
  const list = h('div', { 'aria-busy': 'true' }, loading('Loading events…'));
  const replayRange = rangeSection(ctx);
  root.append(
    h(
      'div',
      { class: 'page-header' },
      h('div', {}, h('h1', {}, 'Events'), h('p', { class: 'lead' }, 'Everything accepted for this tenant, oldest first: the feed receivers catch up with.')),
    ),
    h('div', { class: 'card' }, filters),
    notices.el,
    list,
    replayRange,
  );

  catalog().then(
    (types) => {
      if (!ctx.alive) return;
      const chosen = type.value;
      fill(type,
        h('option', { value: '' }, 'Any type'),
        ...types.map((t) => h('option', { value: t.type, selected: t.type === chosen }, t.type)),
      );
    },
    (error) => notices.error(error),
  );

  // The query being shown, the events read so far and where the feed continues.
  let query = { type: '', agent_id: '' };
  let events = [];
  let cursor = null;
  let full = false;
  let generation = 0;

  async function load(reset) {
    const mine = reset ? ++generation : generation;
    if (reset) {
      events = [];
      cursor = null;
      list.setAttribute('aria-busy', 'true');
      fill(list, loading('Loading events…'));
    }
    const page = await api('GET', withQuery('/v1/events', { limit: PAGE_SIZE, after: cursor, ...query }));
    if (!ctx.alive || mine !== generation) return;
    const data = page?.data ?? [];
    events.push(...data);
    cursor = page?.next_cursor ?? cursor;
    full = data.length === PAGE_SIZE;
    draw();
  }

  function replayButton(event) {
    const button = h('button', { type: 'button', class: 'button button-small' }, 'Replay');
    button.addEventListener('click', () =>
      busy(button, notices, async () => {
        const answer = await api('POST', `/v1/events/${seg(event.id)}/replay`, {});
        if (!ctx.alive) return;
        const n = Number(answer?.deliveries ?? 0);
        notices.ok(`Replayed to ${n} subscription(s)`);
      }),
    );
    return button;
  }

  function draw() {
    list.removeAttribute('aria-busy');
    const filtered = Boolean(query.type || query.agent_id);
    const more = h('button', { type: 'button', class: 'button' }, full ? 'Load more' : 'Check for new events');
    more.addEventListener('click', () => busy(more, notices, () => load(false)));
    if (!events.length) {
      fill(list,
        emptyState(
          filtered ? 'No events match these filters.' : 'No events yet.',
          h('p', {}, 'Events appear here once producers send them (POST /v1/events, or NATS).'),
        ),
        h('div', { class: 'actions' }, more),
      );
      return;
    }
    fill(list,
      table(
        'Events',
        ['ID', 'Type', 'Agent', 'Call', 'Time', 'Payload', ''],
        events.map((event) => {
          const idCell = h('code', { class: 'id', id: uid('event') }, event.id ?? '');
          const replay = replayButton(event);
          replay.setAttribute('aria-describedby', idCell.id);
          return [
            idCell,
            event.type ?? '',
            event.agent_id ?? '',
            event.call_id ?? '',
            time(event.timestamp),
            h('details', { class: 'payload' }, h('summary', {}, 'Show'), h('pre', { class: 'code' }, json(event.data ?? {}))),
            replay,
          ];
        }),
      ),
      h('p', { class: 'small muted' }, `${events.length} event(s) shown.`),
      h('div', { class: 'actions' }, more),
    );
  }

  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    query = { type: type.value, agent_id: agent.value.trim() };
    notices.clear();
    busy(apply, notices, () => load(true)).then(() => {
      if (list.getAttribute('aria-busy')) {
        list.removeAttribute('aria-busy');
        list.replaceChildren();
      }
    });
  });

  return load(true).catch((error) => {
    list.removeAttribute('aria-busy');
    list.replaceChildren();
    notices.error(error);
  });
}

/** A datetime-local value (local time) as RFC 3339 UTC, or null when empty. */
function toUtc(value) {
  if (!value) return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toISOString();
}

function rangeSection(ctx) {
  const notices = new Notices();
  const note = h('p', { class: 'small muted' });
  const subscription = h('select', { id: 'range-subscription', name: 'subscription' }, h('option', { value: '' }, 'Loading…'));
  const from = h('input', { id: 'range-from', name: 'since', type: 'datetime-local', step: '1' });
  const to = h('input', { id: 'range-to', name: 'until', type: 'datetime-local', step: '1' });
  const submit = h('button', { type: 'submit', class: 'button button-primary' }, 'Replay range');
  const form = h(
    'form',
    { class: 'range-form', novalidate: true },
    field('Subscription', subscription),
    field('From', from, 'Your local time.'),
    field('To', to, 'Empty: now.'),
    h('div', { class: 'actions' }, submit),
  );
  allSubscriptions().then(
    (subs) => {
      if (!ctx.alive) return;
      const counts = new Map();
      for (const s of subs) counts.set(s.url, (counts.get(s.url) ?? 0) + 1);
      fill(subscription,
        ...(subs.length
          ? subs.map((s) => h('option', { value: s.id }, counts.get(s.url) > 1 ? `${s.url} (${s.id})` : s.url))
          : [h('option', { value: '' }, 'No subscriptions yet')]),
      );
    },
    (error) => {
      fill(subscription, h('option', { value: '' }, 'Could not load the subscriptions'));
      notices.error(error);
    },
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(submit, notices, async () => {
      notices.clear();
      note.textContent = '';
      if (!subscription.value) throw new Error('Choose a subscription first.');
      const body = {};
      const since = toUtc(from.value);
      const until = toUtc(to.value);
      if (since) body.since = since;
      if (until) body.until = until;
      const answer = await api('POST', `/v1/subscriptions/${seg(subscription.value)}/replay`, body);
      if (!ctx.alive) return;
      notices.ok(`Replayed ${Number(answer?.replayed ?? 0)} event(s)`);
      if (answer?.truncated && answer?.next_since) {
        note.textContent = `One replay queues a bounded number of events; more remain. Replay again from ${answer.next_since}.`;
      }
    });
  });
  return h(
    'section',
    { class: 'card after-list', 'aria-labelledby': 'range-heading' },
    h('h2', { id: 'range-heading' }, 'Replay a time range'),
    h('p', { class: 'muted' }, 'Sends every event accepted in the range that the subscription’s filters match again, with its original webhook-id, so receivers can deduplicate.'),
    form,
    notices.el,
    note,
  );
}
