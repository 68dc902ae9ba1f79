/**
 * The gallery: blobs in id order (the List API's order), one page at a time with
 * previous/next (page tokens), re-listed every few seconds so uploads from
 * anywhere (CLI, SDK, other tabs) appear without a reload.
 */
import type { HaystackClient, StoredBlob } from '../internal/sdk/browser.js';
import { $, el, errorText, human, signedImage } from './dom.js';

/** How many loaded tile images the gallery keeps for reuse (a few pages' worth). */
const IMAGE_CACHE = 200;

export class Gallery {
  /** tokens[i] lists page i ('' = the first page). */
  private tokens = [''];
  private page = 0;
  private shown = '';
  private seq = 0;
  /**
   * Loaded images by blob id, most recently shown last: a re-rendered page (a refresh that
   * saw a change, paging back) reuses them instead of blanking every tile while fresh signed
   * URLs load. Only loaded ones are reused: an unloaded one's signed URL may have expired.
   */
  private readonly images = new Map<string, HTMLImageElement>();
  /** A blob of the current page (the overview times reads of it). */
  anyBlob: string | undefined;

  constructor(
    private readonly client: HaystackClient,
    private pageSize = 24,
  ) {
    $('#page-prev').addEventListener('click', () => this.go(this.page - 1));
    $('#page-next').addEventListener('click', () => this.go(this.page + 1));
    const size = $<HTMLSelectElement>('#page-size');
    size.value = String(pageSize);
    size.addEventListener('change', () => {
      this.pageSize = Number(size.value);
      this.tokens = [''];
      void this.go(0);
    });
  }

  private async go(page: number): Promise<void> {
    if (page < 0 || page >= this.tokens.length) return;
    this.page = page;
    await this.refresh();
  }

  async refresh(): Promise<void> {
    // Periodic refreshes and page changes overlap: only the latest started may draw.
    const seq = ++this.seq;
    const res = await this.client.list({ pageSize: this.pageSize, pageToken: this.tokens[this.page] ?? '' });
    if (seq !== this.seq) return;
    if (res.blobs.length === 0 && this.page > 0) {
      // Deletes emptied this page: back to the previous one.
      this.tokens.length = this.page;
      this.page--;
      return this.refresh();
    }
    this.tokens.length = this.page + 1;
    if (res.nextPageToken) this.tokens.push(res.nextPageToken);
    this.anyBlob = res.blobs[0]?.id ?? this.anyBlob;
    $<HTMLButtonElement>('#page-prev').disabled = this.page === 0;
    $<HTMLButtonElement>('#page-next').disabled = !res.nextPageToken;
    $('#page-label').textContent = `page ${this.page + 1}`;
    const key = res.blobs.map((b) => `${b.id}:${b.replicas}`).join(',');
    if (key === this.shown) return; // unchanged: no flicker
    this.shown = key;
    $('#gallery').replaceChildren(...res.blobs.map((b) => this.tile(b)));
    $('#gallery-empty').hidden = res.blobs.length > 0;
  }

  private image(id: string): HTMLImageElement {
    const cached = this.images.get(id);
    this.images.delete(id);
    const img =
      cached?.complete && cached.naturalWidth > 0
        ? cached
        : signedImage(this.client, id, { loading: 'lazy' });
    this.images.set(id, img);
    for (const old of this.images.keys()) {
      if (this.images.size <= IMAGE_CACHE) break;
      this.images.delete(old);
    }
    return img;
  }

  private tile(b: StoredBlob): HTMLElement {
    const visual = b.contentType.startsWith('image/')
      ? this.image(b.id)
      : el('div', { className: 'file' }, b.contentType || 'application/octet-stream');
    const open = el(
      'a',
      { href: `#/blob/${encodeURIComponent(b.id)}`, className: 'open', title: 'details' },
      visual,
    );
    const del = el('button', { title: 'delete', textContent: 'delete', className: 'delete' });
    const t = el(
      'div',
      { className: 'tile' },
      open,
      del,
      el(
        'div',
        { className: 'meta' },
        el('code', { title: b.id }, b.id.slice(0, 12)),
        el('span', {}, `${human(b.size)} · ${b.replicas}×`),
      ),
    );
    t.dataset.id = b.id;
    del.addEventListener('click', async () => {
      del.disabled = true;
      try {
        await this.client.delete(b.id);
        t.remove();
        this.images.delete(b.id);
        this.shown = '';
        void this.refresh();
      } catch (err) {
        del.disabled = false;
        alert(`delete failed: ${errorText(err)}`);
      }
    });
    return t;
  }
}
