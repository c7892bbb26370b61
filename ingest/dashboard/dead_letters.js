// Dead letters of one subscription, with redrive (one, or all of them).

import { allSubscriptions, api, seg, withQuery } from './api.js';
import { busy, emptyState, field, fill, h, loading, Notices, orDash, table, time, uid } from './ui.js';

const PAGE_SIZE = 100;

export function deadLettersPage(ctx, root) {
  const notices = new Notices();
  const note = h('p', { class: 'small muted' });
  const subscription = h('select', { id: 'dead-letters-subscription', name: 'subscription_id' });
  const redriveAll = h('button', { type: 'button', class: 'button button-primary' }, 'Redrive all');
  const list = h('div', { 'aria-busy': 'true' }, loading('Loading dead letters…'));
  root.append(
    h(
      'div',
      { class: 'page-header' },
      h(
        'div',
        {},
        h('h1', {}, 'Dead letters'),
        h('p', { class: 'lead' }, 'Deliveries that ran out of attempts, were refused for good, or were parked while a subscription was disabled. Redrive sends them again with a fresh attempt budget.'),
      ),
    ),
    h('div', { class: 'card toolbar' }, field('Subscription', subscription), h('div', { class: 'actions' }, redriveAll)),
    notices.el,
    note,
    list,
  );

  let letters = [];
  let cursor = null;
  let generation = 0;

  async function load(reset) {
    const mine = reset ? ++generation : generation;
    if (reset) {
      letters = [];
      cursor = null;
      list.setAttribute('aria-busy', 'true');
      fill(list, loading('Loading dead letters…'));
    }
    const page = await api(
      'GET',
      withQuery('/v1/dead-letters', { subscription_id: subscription.value, limit: PAGE_SIZE, after: cursor }),
    );
    if (!ctx.alive || mine !== generation) return;
    letters.push(...(page?.data ?? []));
    cursor = page?.next_cursor ?? null;
    draw();
  }

  function redriveButton(letter, describedBy) {
    const button = h('button', { type: 'button', class: 'button button-small', 'aria-describedby': describedBy }, 'Redrive');
    button.addEventListener('click', () =>
      busy(button, notices, async () => {
        note.textContent = '';
        await api('POST', `/v1/dead-letters/${seg(letter.id)}/redrive`);
        if (!ctx.alive) return;
        notices.ok('Redriven');
        note.textContent = `The delivery of ${letter.event_id} is queued again.`;
        await load(true);
      }),
    );
    return button;
  }

  function draw() {
    list.removeAttribute('aria-busy');
    if (!letters.length) {
      fill(list, emptyState('No dead letters.', h('p', {}, 'Every delivery of this subscription either succeeded or is still being retried.')));
      return;
    }
    const more = h('button', { type: 'button', class: 'button' }, 'Load more');
    more.addEventListener('click', () => busy(more, notices, () => load(false)));
    fill(list,
      table(
        'Dead letters',
        ['Event', 'Reason', 'Attempts', 'Last status', 'Last error', 'Dead at', ''],
        letters.map((letter) => {
          const event = h('code', { class: 'id', id: uid('dead-letter') }, letter.event_id ?? '');
          const by = letter.failed_by ? `failed by ${letter.failed_by}` : null;
          return [
            h('div', {}, event, letter.event_type ? h('div', { class: 'muted' }, letter.event_type) : null),
            h('div', {}, letter.reason ?? '', by ? h('div', { class: 'muted' }, by) : null),
            String(letter.attempts ?? ''),
            orDash(letter.last_status_code),
            letter.last_error ? h('span', { class: 'error-text' }, letter.last_error) : orDash(null),
            time(letter.dead_at),
            redriveButton(letter, event.id),
          ];
        }),
      ),
      cursor ? h('div', { class: 'actions' }, more) : null,
    );
  }

  redriveAll.addEventListener('click', () =>
    busy(redriveAll, notices, async () => {
      note.textContent = '';
      if (!subscription.value) throw new Error('There is no subscription to redrive.');
      const answer = await api('POST', '/v1/dead-letters/redrive', { subscription_id: subscription.value });
      if (!ctx.alive) return;
      notices.ok('Redriven');
      note.textContent = `${Number(answer?.redriven ?? 0)} dead letter(s) queued for delivery again.`;
      await load(true);
    }),
  );

  subscription.addEventListener('change', () => {
    notices.clear();
    note.textContent = '';
    load(true).catch((error) => {
      list.removeAttribute('aria-busy');
      list.replaceChildren();
      notices.error(error);
    });
  });

  return (async () => {
    try {
      const subs = await allSubscriptions();
      if (!ctx.alive) return;
      if (!subs.length) {
        subscription.append(h('option', { value: '' }, 'No subscriptions yet'));
        subscription.disabled = true;
        redriveAll.disabled = true;
        list.removeAttribute('aria-busy');
        fill(list,
          emptyState('No dead letters: there are no subscriptions yet.', h('a', { href: '#/subscriptions/new', class: 'button' }, 'New subscription')),
        );
        return;
      }
      const counts = new Map();
      for (const s of subs) counts.set(s.url, (counts.get(s.url) ?? 0) + 1);
      fill(subscription,
        ...subs.map((s, i) => h('option', { value: s.id, selected: i === 0 }, counts.get(s.url) > 1 ? `${s.url} (${s.id})` : s.url)),
      );
      await load(true);
    } catch (error) {
      if (!ctx.alive) return;
      list.removeAttribute('aria-busy');
      list.replaceChildren();
      notices.error(error);
    }
  })();
}
