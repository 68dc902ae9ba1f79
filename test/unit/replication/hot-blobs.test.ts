import { describe, expect, it } from 'vitest';
import { hotBlobList } from '../../../internal/replication/hot-blobs.js';

describe('hot blob list', () => {
  const targets: Record<string, number> = { cooling: 4, settled: 3, reading: 5 };
  const rates: Record<string, number> = { cooling: 0.3, settled: 0.1 };
  const list = (reading: { blobId: string; ratePerMinute: number }[], watched: string[]) =>
    hotBlobList(
      reading,
      watched,
      (id) => targets[id] ?? 0,
      (id) => rates[id] ?? 0,
      3,
    );

  it('holds the blobs read at the threshold and the cooling ones above the default, hottest first', () => {
    expect(
      list(
        [
          { blobId: 'reading', ratePerMinute: 90 },
          { blobId: 'b', ratePerMinute: 200 },
        ],
        ['cooling', 'settled', 'reading'],
      ),
    ).toEqual([
      { blobId: 'b', ratePerMinute: 200 },
      { blobId: 'reading', ratePerMinute: 90 },
      { blobId: 'cooling', ratePerMinute: 0.3 },
    ]);
  });

  it('breaks rate ties by blob id and lists a blob once', () => {
    expect(
      list(
        [
          { blobId: 'y', ratePerMinute: 60 },
          { blobId: 'x', ratePerMinute: 60 },
        ],
        ['x', 'y'],
      ).map((h) => h.blobId),
    ).toEqual(['x', 'y']);
  });

  it('is empty for a blob read slowly at the default target', () => {
    expect(list([], ['settled'])).toEqual([]);
  });
});
