// The event-type catalog: each type's description, JSON Schema and example.

import { catalog } from './api.js';
import { fill, h, json, loading, Notices } from './ui.js';

export async function eventTypesPage(ctx, root) {
  const notices = new Notices();
  const body = h('div', { 'aria-busy': 'true' }, loading('Loading the catalog…'));
  root.append(
    h(
      'div',
      { class: 'page-header' },
      h(
        'div',
        {},
        h('h1', {}, 'Event types'),
        h('p', { class: 'lead' }, 'What a subscription can receive. The data of every event is validated against its schema; unknown fields are refused.'),
      ),
    ),
    notices.el,
    body,
  );
  let types;
  try {
    types = await catalog();
  } catch (error) {
    if (!ctx.alive) return;
    body.removeAttribute('aria-busy');
    body.replaceChildren();
    notices.error(error);
    return;
  }
  if (!ctx.alive) return;
  body.removeAttribute('aria-busy');
  const toc = h(
    'ul',
    { class: 'chips', 'aria-label': 'Event types' },
    types.map((t, i) => {
      const jump = h('button', { type: 'button', class: 'chip' }, t.type);
      jump.addEventListener('click', () => {
        const target = document.getElementById(`type-section-${i}`);
        if (!target) return;
        target.scrollIntoView({ behavior: 'smooth', block: 'start' });
        target.focus({ preventScroll: true });
      });
      return h('li', {}, jump);
    }),
  );
  fill(body,
    toc,
    ...types.map((t, i) =>
      h(
        'section',
        { class: 'card type-card', id: `type-section-${i}`, tabindex: '-1', 'aria-labelledby': `type-heading-${i}` },
        h('h2', { id: `type-heading-${i}` }, h('code', {}, t.type)),
        h('p', {}, t.description ?? ''),
        h(
          'div',
          { class: 'two-columns' },
          h('div', {}, h('h3', {}, 'Schema'), h('pre', { class: 'code' }, json(t.schema ?? {}))),
          h('div', {}, h('h3', {}, 'Example'), h('pre', { class: 'code' }, json(t.example ?? {}))),
        ),
      ),
    ),
  );
}
