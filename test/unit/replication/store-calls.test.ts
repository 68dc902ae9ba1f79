import { Code, ConnectError } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import { replicateDataLoss, replicateError } from '../../../internal/replication/store-calls.js';

describe('what a failed Replicate says', () => {
  it('blames the source only when the target names it as the one whose bytes failed', () => {
    expect(
      replicateDataLoss('b', 's1', 's2', 'source s1 holds other content for b than the expected SHA-256'),
    ).toBe(
      'Replicate of b from s1 onto s2: DATA_LOSS, the copy from s1 failed verification: source s1 holds other content for b than the expected SHA-256',
    );
    expect(replicateDataLoss('b', 's1', 's2', 'copy from s1 failed verification: digest mismatch')).toContain(
      'the copy from s1 failed verification',
    );
  });

  it('says the target refused (or the read failed) when its message does not name the source', () => {
    const msg = replicateDataLoss('b', 's1', 's2', 'needle b: header checksum mismatch');
    expect(msg).toBe(
      "Replicate of b from s1 onto s2: DATA_LOSS, s2 refused the copy (its own needle is damaged) or s1's read failed its checksum: needle b: header checksum mismatch",
    );
    // Another store's name in the message is no blame of this source.
    expect(replicateDataLoss('b', 's1', 's2', 'source s11 holds other content')).toContain(
      's2 refused the copy',
    );
  });

  it('keeps the v1 outcomes of a failed Replicate: corrupt source, refusal, missing source', () => {
    const told: string[] = [];
    const on = { corrupt: () => told.push('corrupt'), refused: () => told.push('refused') };
    const loss = replicateError(new ConnectError('x', Code.DataLoss), 's1', 's2', on);
    expect(loss.o).toEqual({ storeFault: false, retryable: true });
    const refused = replicateError(new ConnectError('x', Code.AlreadyExists), 's1', 's2', on);
    expect(refused.o.retryable).toBe(false);
    const missing = replicateError(new ConnectError('x', Code.NotFound), 's1', 's2', on);
    expect(missing.message).toBe('source s1 lacks the blob: x');
    expect(told).toEqual(['corrupt', 'refused']);
  });
});
