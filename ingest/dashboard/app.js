// The dashboard shell: hash routing, the navigation, sign-in and sign-out.
// Pages live in their own modules; every one of them renders into <main> through `render`.

import { api, forgetKey, onUnauthorized, resetCaches, storedKey, storeKey } from './api.js';
import { h, Notices, PageContext } from './ui.js';
import { subscriptionForm, subscriptionList } from './subscriptions.js';
import { subscriptionDetail } from './subscription_detail.js';
import { eventsPage } from './events.js';
import { deadLettersPage } from './dead_letters.js';
import { eventTypesPage } from './event_types.js';

const main = document.getElementById('main');
const header = document.getElementById('topbar-inner');

/** Shared between pages for one navigation: a notice to show on the next page. */
const session = {
  flash: null,
  // Where to go after signing in (the page that sent the user to sign-in).
  returnTo: null,
  // Why the last session ended (a 401 problem), shown on the sign-in page.
  ended: null,
};

const routes = [
  [/^\/signin$/, signInPage],
  [/^\/subscriptions$/, subscriptionList],
  [/^\/subscriptions\/new$/, (ctx, root, nav) => subscriptionForm(ctx, root, nav, null)],
  [/^\/subscriptions\/([^/]+)\/edit$/, (ctx, root, nav, id) => subscriptionForm(ctx, root, nav, id)],
  [/^\/subscriptions\/([^/]+)$/, subscriptionDetail],
  [/^\/events$/, eventsPage],
  [/^\/dead-letters$/, deadLettersPage],
  [/^\/event-types$/, eventTypesPage],
];

const navItems = [
  ['#/subscriptions', 'Subscriptions', '/subscriptions'],
  ['#/events', 'Events', '/events'],
  ['#/dead-letters', 'Dead letters', '/dead-letters'],
  ['#/event-types', 'Event types', '/event-types'],
];

let current = null;
let firstRender = true;

/** What pages use to move around and to leave a message for the next page. */
const router = {
  go(hash, flash) {
    session.flash = flash ?? null;
    if (location.hash === hash) render();
    else location.hash = hash;
  },
  takeFlash() {
    const flash = session.flash;
    session.flash = null;
    return flash;
  },
};

function currentPath() {
  const raw = location.hash.replace(/^#/, '');
  return raw === '' ? '/' : raw;
}

function render() {
  if (current) current.dispose();
  current = new PageContext();
  const path = currentPath();
  const signedIn = Boolean(storedKey());
  if (!signedIn && path !== '/signin') {
    session.returnTo = path === '/' ? null : path;
    location.replace('#/signin');
    return;
  }
  if (signedIn && (path === '/' || path === '/signin')) {
    location.replace('#/subscriptions');
    return;
  }
  renderNav(signedIn ? path : null);
  main.replaceChildren();
  main.removeAttribute('aria-busy');
  let matched = false;
  for (const [pattern, page] of routes) {
    const match = pattern.exec(path);
    if (!match) continue;
    matched = true;
    const params = match.slice(1).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
    const ctx = current;
    const failed = (error) => {
      if (!ctx.alive) return;
      const notices = new Notices();
      notices.error(error);
      main.append(notices.el);
    };
    // A page puts its heading up synchronously, then loads what it shows.
    try {
      Promise.resolve(page(ctx, main, router, ...params)).catch(failed);
    } catch (error) {
      failed(error);
    }
    break;
  }
  if (!matched) notFound();
  const heading = main.querySelector('h1');
  document.title = heading ? `${heading.textContent} · Open Webhooks` : 'Open Webhooks';
  // Move focus to the new page's heading, so keyboard and screen-reader users start there
  // (unless the page focused one of its fields itself).
  if (!firstRender && heading && !main.contains(document.activeElement)) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: true });
  }
  if (!firstRender) window.scrollTo(0, 0);
  firstRender = false;
}

function notFound() {
  main.append(
    h('h1', {}, 'Page not found'),
    h('p', {}, 'There is nothing at this address. ', h('a', { href: '#/subscriptions' }, 'Go to the subscriptions'), '.'),
  );
}

function renderNav(path) {
  const existing = document.getElementById('main-nav');
  if (path === null) {
    if (existing) existing.remove();
    return;
  }
  const section = '/' + (path.split('/')[1] ?? '');
  const nav = h(
    'nav',
    { 'aria-label': 'Main', id: 'main-nav', class: 'main-nav' },
    h(
      'ul',
      {},
      navItems.map(([href, text, prefix]) =>
        h('li', {}, h('a', { href, 'aria-current': section === prefix ? 'page' : null }, text)),
      ),
    ),
    h('button', { type: 'button', class: 'button button-quiet sign-out', onclick: signOut }, 'Sign out'),
  );
  if (existing) existing.replaceWith(nav);
  else header.append(nav);
}

function signOut() {
  forgetKey();
  resetCaches();
  session.returnTo = null;
  session.ended = null;
  router.go('#/signin');
}

onUnauthorized((problem) => {
  resetCaches();
  const path = currentPath();
  // Several calls of one page may be refused at once: the first one moves to sign-in.
  if (path === '/signin') return;
  session.ended = problem;
  session.returnTo = path;
  router.go('#/signin');
});

function signInPage(ctx, root) {
  const notices = new Notices();
  if (session.ended) {
    notices.error(session.ended);
    session.ended = null;
  }
  const input = h('input', {
    id: 'api-key',
    name: 'api-key',
    type: 'password',
    autocomplete: 'off',
    spellcheck: 'false',
    autocapitalize: 'off',
    placeholder: 'owk_…',
    'aria-describedby': 'api-key-hint',
  });
  const button = h('button', { type: 'submit', class: 'button button-primary' }, 'Sign in');
  const form = h(
    'form',
    { class: 'card signin-card', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'api-key' }, 'API key'), input),
    h(
      'p',
      { class: 'hint', id: 'api-key-hint' },
      'A tenant API key, as issued by the admin API. It stays in this browser tab only and is sent to this server’s public API, like any client’s.',
    ),
    h('div', { class: 'actions' }, button),
    notices.el,
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      notices.error(new Error('Enter an API key.'));
      input.focus();
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(key)) {
      notices.error(new Error('An API key has no spaces or special characters; check what was pasted.'));
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      // Any call proves the key; the catalog is small and the same for every tenant.
      await api('GET', '/v1/event-types', undefined, { key });
      if (!ctx.alive) return;
      storeKey(key);
      resetCaches();
      const target = session.returnTo;
      session.returnTo = null;
      router.go(target ? `#${target}` : '#/subscriptions');
    } catch (error) {
      notices.error(error);
      input.focus();
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  root.append(
    h(
      'div',
      { class: 'signin' },
      h('img', { src: '/dashboard/icon.svg', alt: '', width: '48', height: '48', class: 'signin-logo' }),
      h('h1', {}, 'Sign in'),
      h('p', { class: 'lead' }, 'Connect endpoints, send test events, watch deliveries and replay what was missed.'),
      form,
    ),
  );
  input.focus();
}

// The skip link targets <main> without touching the hash (which is the router's).
document.getElementById('skip-link')?.addEventListener('click', (event) => {
  event.preventDefault();
  main.focus();
});

window.addEventListener('hashchange', render);
render();
