/**
 * The Haystack dashboard: views #/ (overview: cluster state and charts),
 * #/gallery (paged, live; uploads) and #/blob/{id} (one blob). Every call is
 * Connect (fetch / XHR) to the page's origin: Envoy.
 */
import { HaystackClient } from '../internal/sdk/browser.js';
import { BlobView } from './blob-view.js';
import { $ } from './dom.js';
import { Gallery } from './gallery.js';
import { Overview } from './overview.js';
import { setupUpload } from './upload.js';

/**
 * The access token (issue 13): typed into the header's field, or from a `#token=…` link
 * (`npm start` prints one; a fragment never reaches a server), kept in session storage only.
 */
const TOKEN_KEY = 'haystack-token';
if (location.hash.startsWith('#token=')) {
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(location.hash.slice('#token='.length)));
  history.replaceState(null, '', `${location.pathname}${location.search}#/`);
}
const client = new HaystackClient({ token: sessionStorage.getItem(TOKEN_KEY) ?? '' });
$<HTMLInputElement>('#token').value = sessionStorage.getItem(TOKEN_KEY) ?? '';
$<HTMLFormElement>('#token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $<HTMLInputElement>('#token').value.trim());
  // Every view holds the client: start again with the new token.
  location.reload();
});
const REFRESH_MS = 2000;

const overview = new Overview(client, (id) => {
  location.hash = `#/blob/${encodeURIComponent(id)}`;
});
const gallery = new Gallery(client);
const blob = new BlobView(client, overview.latest, () => {
  location.hash = '#/gallery';
});
setupUpload(client, () => void gallery.refresh().catch(() => {}));

type ViewName = 'overview' | 'gallery' | 'blob';

function route(): { view: ViewName; id?: string } {
  const h = location.hash.replace(/^#\/?/, '');
  if (h.startsWith('blob/')) return { view: 'blob', id: decodeURIComponent(h.slice(5)) };
  return { view: h === 'gallery' ? 'gallery' : 'overview' };
}

/** Refreshes what the current view shows (the gallery always: it is live, and gives the overview a blob to time). */
async function refreshView(): Promise<void> {
  const r = route();
  await Promise.all([gallery.refresh(), r.view === 'blob' && r.id ? blob.show(r.id) : undefined]);
}

function show(): void {
  const r = route();
  for (const v of ['overview', 'gallery', 'blob'] as const) $(`#${v}-view`).hidden = v !== r.view;
  for (const a of document.querySelectorAll<HTMLAnchorElement>('nav a')) {
    a.classList.toggle('current', a.dataset.view === r.view);
  }
  document.body.dataset.view = r.view;
  void refreshView().catch(() => {});
}

window.addEventListener('hashchange', show);
show();

const tick = () =>
  Promise.allSettled([overview.refresh(gallery.anyBlob), refreshView()]).finally(() =>
    setTimeout(tick, REFRESH_MS),
  );
tick();
