/** Items per page when a listing request leaves page_size 0. */
export const DEFAULT_PAGE_SIZE = 1000;
/** The most items one page holds, whatever page_size asks (bounded memory per request). */
export const MAX_PAGE_SIZE = 10_000;

/**
 * One page of a listing in key order (ListNeedles, ListShards): fetches one item more
 * than the page holds to learn whether another page follows; the next page token is
 * the key of the page's last item ('' on the last page).
 *
 * @param pageSize the request's page_size (0: DEFAULT_PAGE_SIZE; capped at MAX_PAGE_SIZE)
 * @param pageToken the request's page_token ('' for the first page)
 * @param fetch up to `n` items with keys after `after` (from the start when undefined), in key order
 */
export async function keyPage<T>(
  pageSize: number,
  pageToken: string,
  fetch: (after: string | undefined, n: number) => Promise<T[]>,
  keyOf: (item: T) => string,
): Promise<{ items: T[]; nextPageToken: string }> {
  const limit = Math.min(pageSize || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
  const page = await fetch(pageToken || undefined, limit + 1);
  const items = page.slice(0, limit);
  const last = items[items.length - 1];
  return { items, nextPageToken: page.length > limit && last ? keyOf(last) : '' };
}
