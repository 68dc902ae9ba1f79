/**
 * One blob: preview, facts (size, type, SHA-256, created), its replicas (store,
 * address, health), access heat (reads per minute, per reporter) and pending
 * replication tasks; download, copy link, delete. Refreshed while open.
 */
import { StoreHealth } from '../gen/haystack/v1/common_pb.js';
import { TaskKind, TaskState } from '../gen/haystack/v1/replication_pb.js';
import { placementGroupOf } from '../internal/common/placement.js';
import type { HaystackClient } from '../internal/sdk/browser.js';
import {
  $,
  dl,
  el,
  errorText,
  human,
  SIGNED_URL_TTL_SEC,
  STATUS_TIMEOUT_MS,
  signedImage,
  tag,
} from './dom.js';
import type { ClusterView } from './overview.js';

export class BlobView {
  id = '';

  constructor(
    private readonly client: HaystackClient,
    private readonly cluster: ClusterView,
    onDeleted: () => void,
  ) {
    $('#blob-copy').addEventListener('click', async () => {
      // The signed URL the download link holds: it works without a token until it expires.
      const url = $<HTMLAnchorElement>('#blob-download').href;
      try {
        await navigator.clipboard.writeText(url);
        $('#blob-copy').textContent = 'link copied';
      } catch {
        // No clipboard permission (e.g. not a secure context): let the user copy it.
        prompt('Link to this blob', url);
      }
      $('#blob-copy').dataset.copied = url;
    });
    $('#blob-delete').addEventListener('click', async () => {
      if (!confirm(`Delete blob ${this.id}? The same file can be uploaded again later.`)) return;
      try {
        await this.client.delete(this.id);
        onDeleted();
      } catch (err) {
        alert(`delete failed: ${errorText(err)}`);
      }
    });
  }

  /** Shows `id` (a new blob resets the view; the same one refreshes in place). */
  async show(id: string): Promise<void> {
    if (id !== this.id) {
      this.id = id;
      $('#blob-title').textContent = id;
      $('#blob-copy').textContent = 'copy link';
      const a = $<HTMLAnchorElement>('#blob-download');
      a.removeAttribute('href');
      a.download = id;
      void this.client
        .signedUrl(id, { ttlSeconds: SIGNED_URL_TTL_SEC })
        .then((url) => {
          if (this.id === id) a.href = url;
        })
        .catch(() => {});
      $('#blob-preview').replaceChildren();
      $('#blob-replicas tbody').replaceChildren();
      $('#blob-error').textContent = '';
    }
    await this.refresh();
  }

  async refresh(): Promise<void> {
    const id = this.id;
    const [stat, status] = await Promise.allSettled([
      this.client.stat(id, { timeoutMs: STATUS_TIMEOUT_MS }),
      this.client.blobStatus(id, { timeoutMs: STATUS_TIMEOUT_MS }),
    ]);
    if (id !== this.id) return;
    if (stat.status === 'rejected') {
      $('#blob-error').textContent = errorText(stat.reason);
      $('#blob-view').dataset.state = 'missing';
      return;
    }
    const b = stat.value;
    $('#blob-view').dataset.state = 'loaded';
    if (!$('#blob-preview').firstChild) {
      $('#blob-preview').append(
        b.contentType.startsWith('image/')
          ? signedImage(this.client, id)
          : el('div', { className: 'file' }, b.contentType || 'application/octet-stream'),
      );
    }
    dl($('#blob-facts'), [
      ['size', `${human(b.size)} (${b.size} bytes)`],
      ['type', b.contentType || '–'],
      ['created', b.createdAt.toLocaleString()],
      ['SHA-256', el('code', {}, b.sha256)],
      ['replicas', `${b.replicas} of ${b.targetReplicas} wanted`],
    ]);
    const c = this.cluster.cluster;
    const health = new Map(c?.stores.map((s) => [s.storeId, s.health]) ?? []);
    const addressOf = new Map(c?.stores.map((s) => [s.storeId, s.address]) ?? []);
    // Placement mode: the blob lives on its placement group's members (the same
    // function every component uses), plus any extra replicas GetBlobStatus lists.
    const group =
      c && c.placementGroupCount > 0
        ? c.placementGroups[placementGroupOf(id, c.placementGroupCount)]
        : undefined;
    const extras = status.status === 'fulfilled' ? status.value.replicas : [];
    const replicas = [
      ...(group?.members ?? []).map((m) => ({ storeId: m.storeId, address: addressOf.get(m.storeId) ?? '' })),
      ...extras.filter((r) => !group?.members.some((m) => m.storeId === r.storeId)),
    ];
    if (group) {
      $('#blob-group').textContent = `placement group ${group.group}`;
    }
    if (replicas.length > 0) {
      $('#blob-replicas tbody').replaceChildren(
        ...replicas.map((r) =>
          el(
            'tr',
            {},
            el('td', {}, r.storeId),
            el('td', {}, r.address),
            el('td', {}, tag('health', StoreHealth[health.get(r.storeId) ?? StoreHealth.UNSPECIFIED] ?? '?')),
          ),
        ),
      );
    }
    if (status.status === 'fulfilled') {
      const s = status.value;
      dl($('#blob-heat'), [
        ['reads/min', s.ratePerMinute.toFixed(1)],
        ['target replicas', String(s.targetReplicaCount)],
        ...s.heat.map((h): [string, string] => [`  ${h.reporterId}`, `${h.ratePerMinute.toFixed(1)}/min`]),
        [
          'tasks',
          s.tasks.length
            ? s.tasks.map((t) => `${TaskKind[t.kind]} → ${t.storeId} (${TaskState[t.state]})`).join(', ')
            : 'none',
        ],
      ]);
    } else {
      const hot = this.cluster.replication?.hotBlobs.find((h) => h.blobId === id);
      dl($('#blob-heat'), [['reads/min', hot ? hot.ratePerMinute.toFixed(1) : 'not tracked']]);
    }
    if (replicas.length === 0 && !$('#blob-replicas tbody').firstChild) {
      // Keep what was shown last; say so only when there is nothing yet.
      $('#blob-replicas tbody').replaceChildren(
        el(
          'tr',
          {},
          el(
            'td',
            { colSpan: 3, className: 'muted' },
            status.status === 'rejected' ? `unavailable: ${errorText(status.reason)}` : 'none recorded',
          ),
        ),
      );
    }
  }
}
