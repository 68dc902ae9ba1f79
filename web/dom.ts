/** Small DOM helpers shared by the dashboard's views. */
import type { HaystackClient } from '../internal/sdk/browser.js';

export const $ = <T extends HTMLElement = HTMLElement>(sel: string) => document.querySelector(sel) as T;

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> & { className?: string } = {},
  ...children: Array<Node | string>
): HTMLElementTagNameMap[K] {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

export { formatBytes as human } from '../internal/common/format-bytes.js';

export const tag = (kind: string, value: string) => el('span', { className: `tag ${kind}-${value}` }, value);

export function dl(target: HTMLElement, rows: Array<[string, string | Node]>): void {
  target.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

export const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** Lifetime of the signed URLs the dashboard shows (images, download and copied links). */
export const SIGNED_URL_TTL_SEC = 3600;

/**
 * An <img> of a signed URL (issue 13): an image loads without a token header; the URL
 * comes from CreateSignedUrl (needs blob:read), so the element gets its src a moment later.
 */
export function signedImage(client: HaystackClient, id: string, props: Partial<HTMLImageElement> = {}) {
  const img = el('img', { alt: id, ...props });
  client
    .signedUrl(id, { ttlSeconds: SIGNED_URL_TTL_SEC })
    .then((url) => {
      img.src = url;
    })
    .catch((err: unknown) => {
      img.alt = `${id}: ${errorText(err)}`;
    });
  return img;
}

/** Deadline of the status calls: generous, a loaded cluster is exactly when they matter. */
export const STATUS_TIMEOUT_MS = 10_000;
