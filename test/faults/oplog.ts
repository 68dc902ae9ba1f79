import { createHash } from 'node:crypto';
import { type StoreClient, storeClient } from '../helpers/store-client.js';

export const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const clients = new Map<string, StoreClient>();
/** One client (one HTTP/2 connection) per store address: thousands of checks must not open thousands of sockets. */
export function store(address: string): StoreClient {
  let c = clients.get(address);
  if (!c) {
    c = storeClient(address);
    clients.set(address, c);
  }
  return c;
}

/**
 * What the client was told about one blob. A write or delete is "acked" once the
 * call returned success, "unknown" when it failed (it may or may not have
 * happened), "inflight" while the call runs.
 */
export type Outcome = 'inflight' | 'acked' | 'unknown';

export interface BlobRecord {
  id: string;
  sha: string;
  size: number;
  write: Outcome;
  del?: Outcome;
  /** Date.now() of the acknowledgement. */
  writeAckAt?: number;
  deleteAckAt?: number;
  /** Reserved for deletion (never read by the readers: a read racing a delete may see NOT_FOUND). */
  doomed: boolean;
}

/**
 * The independent checker's log of acknowledged operations: every write with the
 * SHA-256 of its bytes, every delete, and what was in flight when a call failed.
 * Nothing here comes from the system under test.
 */
export class OpLog {
  readonly blobs = new Map<string, BlobRecord>();
  private readonly readable: string[] = [];
  private readonly deletable: string[] = [];

  beginWrite(id: string, sha: string, size: number, doomed: boolean): void {
    this.blobs.set(id, { id, sha, size, write: 'inflight', doomed });
  }

  endWrite(id: string, ok: boolean): void {
    const r = this.blobs.get(id);
    if (!r) return;
    r.write = ok ? 'acked' : 'unknown';
    if (!ok) return;
    r.writeAckAt = Date.now();
    (r.doomed ? this.deletable : this.readable).push(id);
  }

  /** An acknowledged blob that is never deleted (for readers). */
  pickReadable(rand: () => number): BlobRecord | undefined {
    if (this.readable.length === 0) return undefined;
    return this.blobs.get(this.readable[Math.floor(rand() * this.readable.length)] as string);
  }

  /** Takes an acknowledged doomed blob to delete (each is deleted at most once). */
  takeDeletable(rand: () => number): BlobRecord | undefined {
    if (this.deletable.length === 0) return undefined;
    const i = Math.floor(rand() * this.deletable.length);
    const id = this.deletable[i] as string;
    this.deletable.splice(i, 1);
    const r = this.blobs.get(id) as BlobRecord;
    r.del = 'inflight';
    return r;
  }

  /** Marks a specific acknowledged blob as being deleted. */
  beginDelete(id: string): void {
    const r = this.blobs.get(id);
    if (!r) return;
    r.del = 'inflight';
    const i = this.deletable.indexOf(id);
    if (i >= 0) this.deletable.splice(i, 1);
  }

  endDelete(id: string, ok: boolean): void {
    const r = this.blobs.get(id);
    if (!r) return;
    r.del = ok ? 'acked' : 'unknown';
    if (ok) r.deleteAckAt = Date.now();
  }

  /** Acked writes that must exist: not deleted, no delete attempted. */
  live(): BlobRecord[] {
    return [...this.blobs.values()].filter((r) => r.write === 'acked' && r.del === undefined);
  }

  deleted(): BlobRecord[] {
    return [...this.blobs.values()].filter((r) => r.del === 'acked');
  }

  /** Outcome unknown: a failed write, or a failed delete. */
  uncertain(): BlobRecord[] {
    return [...this.blobs.values()].filter((r) => r.write !== 'acked' || r.del === 'unknown');
  }

  counts() {
    const all = [...this.blobs.values()];
    return {
      writesAcked: all.filter((r) => r.write === 'acked').length,
      writesUnknown: all.filter((r) => r.write !== 'acked').length,
      deletesAcked: all.filter((r) => r.del === 'acked').length,
      deletesUnknown: all.filter((r) => r.del === 'unknown' || r.del === 'inflight').length,
    };
  }
}
