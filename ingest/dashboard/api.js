// The public API, called like any client does: same origin, `Authorization: Bearer <key>`.
// The key lives in this tab's sessionStorage only; a 401 from any call forgets it.

const KEY_ITEM = 'owh.apiKey';

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM);
  } catch {
    return null;
  }
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_ITEM, key);
}

export function forgetKey() {
  try {
    sessionStorage.removeItem(KEY_ITEM);
  } catch {
    // Storage disabled: nothing was stored either.
  }
}

/** An error answer of the API (RFC 9457 problem+json), or a failure to reach it. */
export class Problem extends Error {
  constructor(status, body) {
    const doc = body && typeof body === 'object' ? body : {};
    const title = typeof doc.title === 'string' && doc.title ? doc.title : `HTTP ${status}`;
    super(title);
    this.status = status;
    this.title = title;
    this.detail = typeof doc.detail === 'string' ? doc.detail : '';
    this.errors = Array.isArray(doc.errors) ? doc.errors : [];
  }
}

/** Thrown after a 401 sent the user to sign-in: the page that called just stops. */
export class SessionEnded extends Error {
  constructor() {
    super('signed out');
  }
}

let unauthorized = () => {};

/** What to do when the API answers 401 (the key was revoked, or is wrong). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/**
 * One API call. Resolves to the parsed JSON body (null for an empty one); rejects with a
 * `Problem`, or with `SessionEnded` after a 401 (unless `options.key` is given: signing in
 * tests a key without touching the stored one).
 */
export async function api(method, path, body, options = {}) {
  const key = options.key ?? storedKey() ?? '';
  const headers = { Accept: 'application/json', Authorization: `Bearer ${key}` };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new Problem(0, {
      title: 'Network error',
      detail: 'The API could not be reached. Check that ingest is running, then try again.',
    });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.ok) return data;
  const problem =
    data && typeof data === 'object'
      ? new Problem(response.status, data)
      : new Problem(response.status, {
          title: response.statusText || `HTTP ${response.status}`,
          detail: text.slice(0, 300),
        });
  if (response.status === 401 && options.key === undefined) {
    forgetKey();
    unauthorized(problem);
    throw new SessionEnded();
  }
  throw problem;
}

/** `path` with a query string of the non-empty `params`. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** A path segment: ids come from the API or the address bar, never spliced in raw. */
export function seg(value) {
  return encodeURIComponent(value);
}

let catalogPromise = null;

/** The event-type catalog (`GET /v1/event-types`), fetched once per sign-in. */
export function catalog() {
  if (!catalogPromise) {
    catalogPromise = api('GET', '/v1/event-types').then(
      (page) => (Array.isArray(page?.data) ? page.data : []),
      (error) => {
        catalogPromise = null;
        throw error;
      },
    );
  }
  return catalogPromise;
}

/** Every subscription of the tenant, following `next_cursor` (at most `maxPages` pages). */
export async function allSubscriptions(maxPages = 20) {
  const all = [];
  let after = null;
  for (let page = 0; page < maxPages; page += 1) {
    const answer = await api('GET', withQuery('/v1/subscriptions', { limit: 1000, after }));
    all.push(...(answer?.data ?? []));
    after = answer?.next_cursor ?? null;
    if (!after) break;
  }
  return all;
}

/** Forgets what belongs to the signed-in tenant. */
export function resetCaches() {
  catalogPromise = null;
}
