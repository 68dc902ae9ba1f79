/**
 * Encryption at rest (issue 13) against real store processes: what reaches the
 * disk, restart, compaction, KEK rotation, tampering, and a store started
 * without (or with the wrong) KEK_FILE.
 */
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Code, ConnectError } from '@connectrpc/connect';
import { afterEach, describe, expect, it } from 'vitest';
import { HAYSTACK_BIN } from '../../internal/cli/processes.js';
import { newKekLine } from '../../internal/store/crypto/kek.js';
import { decodeHeader, MAX_HEADER_LENGTH } from '../../internal/store/needle.js';
import { securityOf, TEST_ADMIN } from '../helpers/pki.js';
import { readBlob, sameBytes, storeClient, writeBlob } from '../helpers/store-client.js';
import { exec, type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

const adminSecurity = await securityOf(TEST_ADMIN);
const started: ServerProcess[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((p) => p.kill()));
});

async function start(dataDir: string, kekFile: string): Promise<ServerProcess> {
  const p = await spawnServer({
    name: 'crypt-store',
    args: ['store', '--listen', '127.0.0.1:0', '--data', dataDir],
    env: { STORE_ID: 'crypt', KEK_FILE: kekFile },
  });
  started.push(p);
  return p;
}

/** A distinctive multi-KiB pattern: text a raw grep of the volume would find. */
function pattern(n: number, tag: string): Buffer {
  const unit = Buffer.from(`[plaintext of ${tag}: THE QUICK BROWN FOX 0123456789]`);
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i += unit.length) unit.copy(out, i);
  return out;
}

/** Files under `dir` (recursively: the shard engine lives in dir/ec) holding a 48-byte probe of `data`. */
async function filesContaining(dir: string, data: Buffer): Promise<string[]> {
  const probe = data.subarray(100, 148);
  const hits: string[] = [];
  for (const name of await readdir(dir, { recursive: true })) {
    const file = path.join(dir, name);
    if ((await stat(file)).isFile() && (await readFile(file)).includes(probe)) hits.push(name);
  }
  return hits;
}

const codeOf = async (p: Promise<unknown>) =>
  p.then(
    () => 'OK',
    (e: unknown) => Code[ConnectError.from(e).code],
  );

describe('encryption at rest (real store processes)', () => {
  it('a volume file read raw has no plaintext; restart, compaction and KEK rotation keep every blob byte-identical', {
    timeout: 180_000,
  }, async () => {
    const dir = tmpName('crypt');
    const kek = `${dir}-kek`;
    const k1 = newKekLine('k1');
    const k2 = newKekLine('k2');
    await writeFile(kek, `${k1}\n`, { mode: 0o600 });
    const blobs = new Map<string, Buffer>([
      ['small', pattern(4 * 1024, 'small')],
      ['medium', pattern(64 * 1024, 'medium')],
      ['large', pattern(1024 * 1024 + 77, 'large')], // streamed, over the one-read size
    ]);
    let store = await start(dir, kek);
    let client = storeClient(store.address);
    for (const [id, data] of blobs)
      await writeBlob(client, id, data, { contentType: 'application/octet-stream' });
    // A deleted blob and its replacement: compaction drops the old needle.
    await writeBlob(client, 'churn', pattern(30_000, 'churn-old'));
    await client.delete({ blobId: 'churn', term: 1n }); // as the test's gateway
    await writeBlob(client, 'churn', pattern(30_000, 'churn-new'));
    blobs.set('churn', pattern(30_000, 'churn-new'));

    const verify = async (when: string) => {
      for (const [id, data] of blobs) {
        expect(sameBytes(await readBlob(client, id), data), `${id} ${when}`).toBe('identical');
        expect(await filesContaining(dir, data), `${id} plaintext on disk ${when}`).toEqual([]);
      }
    };
    await verify('after upload');
    expect(await filesContaining(dir, pattern(30_000, 'churn-old'))).toEqual([]);
    const keys = async () => JSON.parse(await readFile(path.join(dir, '1.keys'), 'utf8'));
    expect((await keys()).slots.map((s: { kek: string }) => s.kek)).toEqual(['k1']);

    await store.stop();
    store = await start(dir, kek);
    client = storeClient(store.address);
    await verify('after a restart');

    const admin = storeClient(store.address, { security: adminSecurity });
    const compacted = await admin.compact({ volumeId: 1, force: true });
    expect(compacted.compactions.length).toBe(1);
    await verify('after compaction');
    expect((await keys()).current).toBe(2);
    expect((await admin.scrub({ volumeId: 0 })).corrupt).toEqual([]);

    // Rotation: k2 appended (the newest wraps); the store re-wraps at startup.
    await store.stop();
    await writeFile(kek, `${k1}\n${k2}\n`);
    store = await start(dir, kek);
    client = storeClient(store.address);
    await verify('after adding k2');
    expect((await keys()).slots.map((s: { kek: string }) => s.kek)).toEqual(['k2']);
    // k1 retired: still every blob.
    await store.stop();
    await writeFile(kek, `${k2}\n`);
    store = await start(dir, kek);
    client = storeClient(store.address);
    await verify('after removing k1');
  });

  it('a flipped ciphertext byte fails the read with DATA_LOSS and scrub reports it', {
    timeout: 120_000,
  }, async () => {
    const dir = tmpName('crypt-flip');
    const kek = `${dir}-kek`;
    await writeFile(kek, `${newKekLine('k1')}\n`, { mode: 0o600 });
    const store = await start(dir, kek);
    const client = storeClient(store.address);
    const data = pattern(20_000, 'flip');
    const w = (await writeBlob(client, 'victim', data)).replicas[0]!;
    await writeBlob(client, 'bystander', pattern(20_000, 'bystander'));
    const file = path.join(dir, `${w.volumeId}.dat`);
    const raw = await readFile(file);
    const h = decodeHeader(raw.subarray(Number(w.offset), Number(w.offset) + MAX_HEADER_LENGTH));
    const at = Number(w.offset) + 40 + h.key.length + (h.metaLen ?? 0) + 12_345;
    const { open } = await import('node:fs/promises');
    const f = await open(file, 'r+');
    await f.write(Buffer.from([raw[at]! ^ 0x20]), 0, 1, at);
    await f.close();

    expect(await codeOf(readBlob(client, 'victim'))).toBe('DataLoss');
    expect(sameBytes(await readBlob(client, 'bystander'), pattern(20_000, 'bystander'))).toBe('identical');
    const report = await storeClient(store.address, { security: adminSecurity }).scrub({ volumeId: 0 });
    expect(report.corrupt.map((c) => c.blobId)).toEqual(['victim']);
  });

  it('a store whose volumes are encrypted exits non-zero naming KEK_FILE without it, with a wrong one, or an unreadable one', {
    timeout: 120_000,
  }, async () => {
    const dir = tmpName('crypt-kek');
    const kek = `${dir}-kek`;
    await writeFile(kek, `${newKekLine('k1')}\n`, { mode: 0o600 });
    const store = await start(dir, kek);
    await writeBlob(storeClient(store.address), 'x', pattern(8000, 'x'));
    await store.stop();

    const run = async (env: Record<string, string>) => {
      const res = await exec(
        process.execPath,
        [HAYSTACK_BIN, 'store', '--listen', '127.0.0.1:0', '--data', dir],
        {
          env: { ...process.env, INSECURE_PLAINTEXT: '1', STORE_ID: 'crypt', ...env },
          timeoutMs: 60_000,
        },
      );
      expect(res.code, res.stderr).not.toBe(0);
      expect(res.stderr).toContain('KEK_FILE');
      return res.stderr;
    };
    expect(await run({ KEK_FILE: '' })).toMatch(/encrypted/);
    const wrong = `${dir}-wrong`;
    await writeFile(wrong, `${newKekLine('k1')}\n`);
    expect(await run({ KEK_FILE: wrong })).toMatch(/does not unwrap/);
    expect(await run({ KEK_FILE: `${dir}-missing` })).toMatch(/cannot read/);
    await writeFile(wrong, 'k1 not-base64-of-32-bytes\n');
    expect(await run({ KEK_FILE: wrong })).toMatch(/exactly 32 bytes/);
  });
});
