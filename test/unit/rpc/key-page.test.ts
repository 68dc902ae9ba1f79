import { describe, expect, it } from 'vitest';
import { DEFAULT_PAGE_SIZE, keyPage, MAX_PAGE_SIZE } from '../../../internal/rpc/key-page.js';

const keys = Array.from({ length: 25 }, (_, i) => `k${String(i).padStart(3, '0')}`);
const asked: number[] = [];
const fetch = async (after: string | undefined, n: number) => {
  asked.push(n);
  return keys.filter((k) => after === undefined || k > after).slice(0, n);
};

describe('keyPage', () => {
  it('walks every key once, in order, across pages', async () => {
    const seen: string[] = [];
    let token = '';
    do {
      const page = await keyPage(10, token, fetch, (k) => k);
      seen.push(...page.items);
      token = page.nextPageToken;
    } while (token);
    expect(seen).toEqual(keys);
  });

  it('gives no next token when the last page is exactly full', async () => {
    const page = await keyPage(5, 'k019', fetch, (k) => k);
    expect(page.items).toEqual(['k020', 'k021', 'k022', 'k023', 'k024']);
    expect(page.nextPageToken).toBe('');
  });

  it('uses the default for 0 and caps what a caller may ask', async () => {
    asked.length = 0;
    await keyPage(0, '', fetch, (k) => k);
    await keyPage(1_000_000, '', fetch, (k) => k);
    expect(asked).toEqual([DEFAULT_PAGE_SIZE + 1, MAX_PAGE_SIZE + 1]);
  });
});
