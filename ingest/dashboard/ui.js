// DOM helpers. Everything the API returns is customer-controlled, so it only ever reaches the
// page as text nodes and attribute values: no HTML is parsed from strings anywhere.

import { Problem, SessionEnded } from './api.js';

/**
 * An element: `h('a', { href: '#/x', class: 'button' }, 'text', child, [more])`.
 * Props: `class`, `for`, `on<event>` (listeners), booleans (set when true), other attributes.
 * Children: strings and numbers become text nodes; null, undefined and false are skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (name === 'for') {
      el.htmlFor = value;
    } else if (name === 'value' || name === 'checked' || name === 'selected') {
      el[name] = value;
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

/** Replaces the children of `el` (same child rules as `h`: null and false are skipped). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

let uniqueCounter = 0;

/** A fresh element id with a readable prefix. */
export function uid(prefix) {
  uniqueCounter += 1;
  return `${prefix}-${uniqueCounter}`;
}

/** A problem as an alert: title, detail, and each offending field. */
export function problemAlert(error) {
  let title = 'Something went wrong';
  let detail = error && error.message ? String(error.message) : '';
  let errors = [];
  if (error instanceof Problem) {
    title = error.status ? `${error.title} (${error.status})` : error.title;
    detail = error.detail;
    errors = error.errors;
  }
  return h(
    'div',
    { role: 'alert', class: 'alert' },
    h('p', { class: 'alert-title' }, title),
    detail ? h('p', { class: 'alert-detail' }, detail) : null,
    errors.length
      ? h(
          'ul',
          { class: 'alert-errors' },
          errors.map((e) => {
            const field = e && typeof e.field === 'string' ? e.field : '';
            const message = e && typeof e.message === 'string' ? e.message : '';
            return h('li', {}, field ? h('code', {}, field) : null, field ? ': ' : null, message);
          }),
        )
      : null,
  );
}

/** The success notice on screen: one at a time, so the latest one is the one that is read. */
let currentStatus = null;

/**
 * The result area of one piece of a page: an alert (role=alert) when something failed, a success
 * notice (role=status) when something worked. Each is inserted when there is something to say
 * and removed when cleared; a new success notice anywhere replaces the previous one.
 */
export class Notices {
  constructor() {
    this.el = h('div', { class: 'notices' });
    this.alert = null;
    this.status = null;
  }

  error(error) {
    if (error instanceof SessionEnded) return;
    this.clear();
    this.alert = problemAlert(error);
    this.el.append(this.alert);
  }

  ok(text) {
    this.clear();
    if (currentStatus) currentStatus.remove();
    this.status = h('div', { role: 'status', class: 'status' }, text);
    currentStatus = this.status;
    this.el.append(this.status);
  }

  clear() {
    this.clearError();
    if (this.status) {
      this.status.remove();
      if (currentStatus === this.status) currentStatus = null;
      this.status = null;
    }
  }

  clearError() {
    if (this.alert) this.alert.remove();
    this.alert = null;
  }
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

/** An RFC 3339 time in local time, the exact value as its tooltip; a dash when absent. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h('span', {}, String(iso));
  return h('time', { datetime: iso, title: iso }, dateFormat.format(date));
}

/** A value, or a muted dash when it is null, undefined or empty. */
export function orDash(value) {
  if (value === null || value === undefined || value === '') return h('span', { class: 'muted' }, '—');
  return String(value);
}

/** A small coloured label. */
export function badge(text, tone) {
  return h('span', { class: `badge badge-${tone}` }, text);
}

/** A table in a horizontally scrolling wrapper: `columns` are header texts, `rows` arrays of cells. */
export function table(label, columns, rows) {
  return h(
    'div',
    { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': label },
    h(
      'table',
      {},
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
      h(
        'tbody',
        {},
        rows.map((cells) => (cells instanceof Node ? cells : h('tr', {}, cells.map((c) => h('td', {}, c))))),
      ),
    ),
  );
}

export function loading(text = 'Loading…') {
  return h('p', { class: 'loading' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
}

export function emptyState(text, ...more) {
  return h('div', { class: 'empty' }, h('p', { class: 'empty-title' }, text), more);
}

/** A labelled form field: label, control, optional hint (tied with aria-describedby). */
export function field(labelText, control, hint) {
  if (!control.id) control.id = uid('field');
  let hintEl = null;
  if (hint) {
    hintEl = h('p', { class: 'hint', id: `${control.id}-hint` }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
  }
  return h('div', { class: 'field' }, h('label', { for: control.id }, labelText), control, hintEl);
}

/** Runs `action` with `button` disabled and marked busy; errors go to `notices`. */
export async function busy(button, notices, action) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await action();
  } catch (error) {
    if (notices) notices.error(error);
    else if (!(error instanceof SessionEnded)) throw error;
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

/** Pretty JSON text. */
export function json(value) {
  return JSON.stringify(value, null, 2);
}

/** Copies `text`: the async clipboard API, else a selected textarea and `execCommand`. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), 1500));
      await Promise.race([navigator.clipboard.writeText(text), timeout]);
      return true;
    } catch {
      // Refused (no permission, no focus): the fallback below.
    }
  }
  const area = h('textarea', { class: 'offscreen', readonly: true, 'aria-hidden': 'true', tabindex: '-1' });
  area.value = text;
  document.body.appendChild(area);
  const previous = document.activeElement;
  area.select();
  let done = false;
  try {
    done = document.execCommand('copy');
  } catch {
    done = false;
  }
  area.remove();
  if (previous && typeof previous.focus === 'function') previous.focus();
  return done;
}

/**
 * What a page may do while it is on screen: know whether it still is (`alive`), run timers that
 * stop when it is left, and report errors that are not a finished session.
 */
export class PageContext {
  constructor() {
    this.disposed = false;
    this.timers = new Set();
  }

  get alive() {
    return !this.disposed;
  }

  /** `fn` after `ms`, unless the page was left meanwhile. */
  later(ms, fn) {
    const id = setTimeout(() => {
      this.timers.delete(id);
      if (!this.disposed) fn();
    }, ms);
    this.timers.add(id);
    return id;
  }

  cancel(id) {
    clearTimeout(id);
    this.timers.delete(id);
  }

  dispose() {
    this.disposed = true;
    for (const id of this.timers) clearTimeout(id);
    this.timers.clear();
  }
}
