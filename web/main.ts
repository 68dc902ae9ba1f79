/**
 * The Haystack dashboard: cluster status (live), drag-and-drop uploads with
 * progress, a gallery loading images through /blobs/{id}, delete. Every call is
 * Connect (over fetch / XHR) to the page's origin: Envoy.
 */
import { StoreHealth } from '../gen/haystack/v1/common_pb.js';
import { DirectoryRole } from '../gen/haystack/v1/directory_pb.js';
import { HaystackClient, type StoredBlob } from '../internal/sdk/browser.js';

const client = new HaystackClient();
const REFRESH_MS = 2000;

const $ = <T extends HTMLElement = HTMLElement>(sel: string) => document.querySelector(sel) as T;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> & { className?: string } = {},
  ...children: Array<Node | string>
): HTMLElementTagNameMap[K] {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

const tag = (kind: string, value: string) => el('span', { className: `tag ${kind}-${value}` }, value);

function dl(target: HTMLElement, rows: Array<[string, string]>): void {
  target.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

async function refreshStatus(): Promise<void> {
  const [cluster, replication, cache] = await Promise.allSettled([
    client.clusterStatus({ timeoutMs: 3000 }),
    client.replicationStats({ timeoutMs: 3000 }),
    client.gatewayStats({ timeoutMs: 3000 }),
  ]);
  const conn = $('#conn');
  const ok = cluster.status === 'fulfilled';
  conn.textContent = ok ? 'cluster up' : 'directory unreachable';
  conn.className = `pill ${ok ? 'ok' : 'bad'}`;
  $('#updated').textContent = `updated ${new Date().toLocaleTimeString()}`;

  if (cluster.status === 'fulfilled') {
    const c = cluster.value;
    $('#dir-summary').textContent = `leader ${c.leaderId || 'none'} · term ${c.term} · ${c.blobCount} blobs`;
    $('#directories tbody').replaceChildren(
      ...[...c.directories]
        .sort((a, b) => a.directoryId.localeCompare(b.directoryId))
        .map((d) =>
          el(
            'tr',
            {},
            el('td', {}, d.directoryId),
            el('td', {}, d.address),
            el('td', {}, tag('role', d.reachable ? (DirectoryRole[d.role] ?? '?') : 'UNSPECIFIED')),
            el('td', {}, String(d.term)),
            el('td', {}, String(d.commitIndex)),
          ),
        ),
    );
    $('#stores tbody').replaceChildren(
      ...[...c.stores]
        .sort((a, b) => a.storeId.localeCompare(b.storeId))
        .map((s) => {
          const cap = Number(s.capacityBytes);
          const used = cap - Number(s.freeBytes);
          const bar = el('div', { className: 'bar', title: `${human(used)} used of ${human(cap)}` });
          bar.append(el('span', { style: `width:${cap ? Math.round((used / cap) * 100) : 0}%` } as never));
          return el(
            'tr',
            {},
            el('td', {}, s.storeId),
            el('td', {}, s.address),
            el('td', {}, tag('health', StoreHealth[s.health] ?? '?')),
            el('td', {}, bar, el('span', { className: 'muted' }, `${human(Number(s.freeBytes))} free`)),
          );
        }),
    );
  }

  if (replication.status === 'fulfilled') {
    const r = replication.value;
    const queued = r.queue.reduce((n, q) => n + Number(q.depth), 0);
    dl($('#replication'), [
      ['manager', `${r.managerId}${r.active ? ' (active)' : ''}`],
      ['queue', String(queued)],
      ['in flight', String(r.inFlight)],
      ['completed', String(r.completed)],
      ['failed', String(r.failed)],
    ]);
    $('#hot').className = r.hotBlobs.length === 0 ? 'empty' : '';
    $('#hot').replaceChildren(
      ...(r.hotBlobs.length === 0
        ? [el('li', { className: 'muted' }, 'none')]
        : r.hotBlobs
            .slice(0, 8)
            .map((h) =>
              el(
                'li',
                {},
                el('code', {}, h.blobId.slice(0, 16)),
                ` ${h.ratePerMinute.toFixed(1)}/min · ${h.replicaCount}/${h.targetReplicaCount} replicas`,
              ),
            )),
    );
  } else {
    dl($('#replication'), [['manager', 'unreachable']]);
  }

  if (cache.status === 'fulfilled') {
    const g = cache.value;
    $('#hit-rate').textContent = `${(g.cluster.hitRate * 100).toFixed(1)}%`;
    dl($('#cache'), [
      ['backend', `${g.cacheBackend}${g.cacheAvailable ? '' : ' (unavailable)'}`],
      ['hits', String(g.cluster.hits)],
      ['misses', String(g.cluster.misses)],
      ['max blob', human(g.cacheMaxBlobSize)],
      ['max upload', human(g.maxUploadSize)],
    ]);
  }
}

function tile(b: StoredBlob): HTMLElement {
  const visual = b.contentType.startsWith('image/')
    ? el('img', { src: client.blobUrl(b.id), alt: b.id, loading: 'lazy' })
    : el('div', { className: 'file' }, b.contentType);
  const del = el('button', { title: 'delete', textContent: 'delete' });
  const t = el(
    'div',
    { className: 'tile' },
    visual,
    del,
    el(
      'div',
      { className: 'meta' },
      el('code', { title: b.id }, b.id.slice(0, 12)),
      el('span', {}, human(b.size)),
    ),
  );
  t.dataset.id = b.id;
  del.addEventListener('click', async () => {
    del.disabled = true;
    try {
      await client.delete(b.id);
      t.remove();
      void refreshGallery();
    } catch (err) {
      del.disabled = false;
      alert(`delete failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  });
  return t;
}

async function refreshGallery(): Promise<void> {
  const blobs: StoredBlob[] = [];
  for await (const b of client.listAll({ pageSize: 200 })) {
    blobs.push(b);
    if (blobs.length >= 500) break;
  }
  blobs.sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime());
  $('#gallery-count').textContent = `${blobs.length} blobs`;
  $('#gallery').replaceChildren(...blobs.map(tile));
}

async function uploadFiles(files: FileList | File[]): Promise<void> {
  for (const file of Array.from(files)) {
    const progress = el('progress', { max: file.size || 1, value: 0 });
    const state = el('span', { className: 'state' }, '0%');
    const row = el('li', {}, el('span', { className: 'name', title: file.name }, file.name), progress, state);
    $('#uploads').prepend(row);
    try {
      const b = await client.uploadWithProgress(file, {
        contentType: file.type || 'application/octet-stream',
        onProgress: (sent, total) => {
          progress.value = sent;
          state.textContent = `${total ? Math.round((sent / total) * 100) : 100}%`;
        },
      });
      row.className = 'done';
      row.dataset.id = b.id;
      state.textContent = 'stored';
      progress.value = file.size || 1;
    } catch (err) {
      row.className = 'failed';
      state.textContent = 'failed';
      row.title = err instanceof Error ? err.message : String(err);
    }
  }
  await refreshGallery();
}

function setupUpload(): void {
  const drop = $('#drop');
  const input = $<HTMLInputElement>('#file');
  input.addEventListener('change', () => {
    if (input.files) void uploadFiles(input.files);
    input.value = '';
  });
  for (const ev of ['dragenter', 'dragover']) {
    drop.addEventListener(ev, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  for (const ev of ['dragleave', 'drop']) {
    drop.addEventListener(ev, (e) => {
      e.preventDefault();
      drop.classList.remove('over');
    });
  }
  drop.addEventListener('drop', (e) => {
    const files = (e as DragEvent).dataTransfer?.files;
    if (files?.length) void uploadFiles(files);
  });
}

setupUpload();
const tick = () =>
  refreshStatus()
    .catch(() => {})
    .finally(() => setTimeout(tick, REFRESH_MS));
tick();
void refreshGallery();
