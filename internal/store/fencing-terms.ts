import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeAtomic } from '../common/atomic-file.js';
import { crc32c } from './crc32c.js';

/** Who issued a fencing term: directory leaders and replication managers count separately. */
export type Issuer = 'directory' | 'manager';

/** The file in a store's data directory (replaced atomically: `fencing-terms.json.tmp` while written). */
export const FENCING_TERMS_FILE = 'fencing-terms.json';

/** A fencing-terms file that cannot be trusted: the store refuses to start rather than forget terms. */
export class FencingTermsCorruptError extends Error {
  override readonly name = 'FencingTermsCorruptError';
}

type Terms = Record<Issuer, bigint>;

const ISSUERS: readonly Issuer[] = ['directory', 'manager'];
const DECIMAL = /^\d{1,20}$/;

/** The checksummed payload: the CRC covers the issuer terms in a fixed order. */
function checksum(t: Terms): number {
  return crc32c(Buffer.from(`${t.directory}:${t.manager}`));
}

function encode(t: Terms): Buffer {
  return Buffer.from(
    `${JSON.stringify({ directory: String(t.directory), manager: String(t.manager), crc32c: checksum(t) })}\n`,
  );
}

function decode(file: string, raw: string): Terms {
  const bad = (why: string) =>
    new FencingTermsCorruptError(
      `${file}: ${why}. Refusing to start: a store that forgot its fencing terms would accept writes from deposed senders. ` +
        `Restore the file, or (only once every directory and replication manager runs a term above any this store saw) remove it`,
    );
  let o: unknown;
  try {
    o = JSON.parse(raw);
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message})`);
  }
  if (typeof o !== 'object' || o === null) throw bad('not an object');
  const rec = o as Record<string, unknown>;
  const t = { directory: 0n, manager: 0n };
  for (const i of ISSUERS) {
    const v = rec[i];
    if (typeof v !== 'string' || !DECIMAL.test(v))
      throw bad(`${i} must be a decimal string, got ${JSON.stringify(v)}`);
    t[i] = BigInt(v);
  }
  if (rec.crc32c !== checksum(t)) throw bad(`checksum mismatch (stored ${JSON.stringify(rec.crc32c)})`);
  return t;
}

/**
 * The highest fencing term a store has accepted from each issuer, durable across
 * crashes (like raft's currentTerm).
 *
 * Guarantee: once `raise(issuer, t)` has resolved, `open` on the same directory —
 * after any crash, kill -9 or power loss that keeps fsync'd data — reports
 * `highest(issuer) >= t`. So a store acts on a term only after it is durable, and a
 * restarted store still refuses every term older than one it acted on.
 *
 * Cost: the file is written only when a term rises (rare: a leader election, a
 * manager failover); calls at the durable term return at once. Rises that arrive
 * while a write is in progress share the one write that follows it.
 *
 * Errors: `open` throws FencingTermsCorruptError for a file that exists but cannot be
 * read back exactly (never resets to 0); `raise` rejects with the I/O error when the
 * file could not be written (the term stays raised in memory: refusing older terms
 * is always safe; a later `raise` retries the write).
 */
export class FencingTerms {
  /** Highest term accepted per issuer (what older terms are refused against). */
  private readonly accepted: Terms;
  /** Highest term per issuer known to be on disk. */
  private readonly durable: Terms;
  /** The write in progress, if any. */
  private writing: Promise<void> | undefined;
  /** The write queued behind it: it snapshots `accepted` when it starts, so it covers every rise until then. */
  private queued: Promise<void> | undefined;

  private constructor(
    private readonly dir: string,
    initial: Terms,
    /** Called once a write is on disk (metrics, tests). */
    private readonly onPersisted?: (terms: Readonly<Terms>) => void,
  ) {
    this.accepted = { ...initial };
    this.durable = { ...initial };
  }

  /** Loads `dir/fencing-terms.json`; a missing file is a store that never saw a term (all 0). */
  static async open(dir: string, onPersisted?: (terms: Readonly<Terms>) => void): Promise<FencingTerms> {
    const file = path.join(dir, FENCING_TERMS_FILE);
    let raw: string | undefined;
    try {
      raw = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    return new FencingTerms(
      dir,
      raw === undefined ? { directory: 0n, manager: 0n } : decode(file, raw),
      onPersisted,
    );
  }

  /** The highest term accepted from `issuer` (possibly still being written). */
  highest(issuer: Issuer): bigint {
    return this.accepted[issuer];
  }

  /** The highest term from `issuer` that is on disk. */
  persisted(issuer: Issuer): bigint {
    return this.durable[issuer];
  }

  /**
   * Accepts `term` from `issuer` and resolves once a term at least as high is on
   * disk. A term at or below the durable one resolves at once without I/O.
   */
  async raise(issuer: Issuer, term: bigint): Promise<void> {
    if (term > this.accepted[issuer]) this.accepted[issuer] = term;
    while (this.durable[issuer] < term) await this.schedule();
  }

  /** The next write: joins the queued one, or queues one behind the write in progress. */
  private schedule(): Promise<void> {
    if (this.queued) return this.queued;
    const before = this.writing ?? Promise.resolve();
    const next: Promise<void> = before
      .catch(() => {})
      .then(() => {
        this.queued = undefined;
        this.writing = next;
        return this.write();
      })
      .finally(() => {
        if (this.writing === next) this.writing = undefined;
      });
    this.queued = next;
    return next;
  }

  private async write(): Promise<void> {
    const snap = { ...this.accepted };
    await writeAtomic(this.dir, FENCING_TERMS_FILE, encode(snap));
    for (const i of ISSUERS) if (snap[i] > this.durable[i]) this.durable[i] = snap[i];
    this.onPersisted?.(snap);
  }
}
