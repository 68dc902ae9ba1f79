/**
 * KEK rotation without a restart (issue 13): StoreService RewrapKeys and
 * `haystack keys rewrap` against a real directory and real store processes
 * over mTLS. Add a KEK as the newest line, re-wrap through the CLI (fanned out
 * via the directory's store list), remove the old KEK, restart: every blob
 * still reads byte-identical. Only an admin may re-wrap; a KEK_FILE lacking a
 * KEK in use is refused with nothing changed; a plaintext store says so.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Code, ConnectError } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HAYSTACK_BIN } from '../../internal/cli/processes.js';
import { newKekLine } from '../../internal/store/crypto/kek.js';
import { Cluster } from '../helpers/cluster.js';
import { adminTlsEnv, securityOf, TEST_ADMIN, TEST_GATEWAY } from '../helpers/pki.js';
import { bytes, readBlob, sameBytes, storeClient, writeBlob } from '../helpers/store-client.js';
import { exec, grpcurl, type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

const kek = `${tmpName('rewrap')}-kek`;
const k1 = newKekLine('k1');
const k2 = newKekLine('k2');
let cluster: Cluster;
let adminEnv: Record<string, string>;
const extra: ServerProcess[] = [];

beforeAll(async () => {
  await writeFile(kek, `${k1}\n`, { mode: 0o600 });
  cluster = await Cluster.start({
    directories: 1,
    stores: 2,
    gateways: 0,
    replication: false,
    redis: false,
    envoy: false,
    storeEnv: { KEK_FILE: kek },
  });
  adminEnv = await adminTlsEnv();
}, 180_000);
afterAll(async () => {
  await Promise.all(extra.map((p) => p.kill()));
  await cluster?.stop();
});

const storeDir = (i: number) => path.join(cluster.dataDir, `store-${i}`);
const admin = async (i: number) =>
  storeClient(cluster.stores[i]!.address, { security: await securityOf(TEST_ADMIN) });

/** KEK id of every slot of every `<vid>.keys` of store i (blob and shard volumes), by file. */
async function wrappedBy(i: number): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const name of await readdir(storeDir(i), { recursive: true })) {
    if (!name.endsWith('.keys')) continue;
    const j = JSON.parse(await readFile(path.join(storeDir(i), name), 'utf8')) as {
      slots: { kek: string }[];
    };
    out[name] = j.slots.map((s) => s.kek);
  }
  return out;
}

function haystack(args: string[]) {
  return exec(process.execPath, [HAYSTACK_BIN, ...args], {
    env: { ...process.env, HAYSTACK_URL: cluster.directoryAddrs.split(',')[0]!, ...adminEnv },
    timeoutMs: 120_000,
  });
}

const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => 'OK',
    (e: unknown) => Code[ConnectError.from(e).code],
  );

describe('KEK rotation without a restart (RewrapKeys, haystack keys rewrap)', () => {
  it('add k2, re-wrap every store from the CLI, remove k1, restart: every blob byte-identical', {
    timeout: 240_000,
  }, async () => {
    const blobs = new Map<string, Buffer>();
    for (let i = 0; i < 2; i++) {
      for (const [n, size] of [
        ['small', 3000],
        ['big', 300_000],
      ] as const) {
        const id = `${n}-${i}`;
        blobs.set(id, bytes(size, id.length + i));
        await writeBlob(storeClient(cluster.stores[i]!.address), id, blobs.get(id)!);
      }
    }
    for (let i = 0; i < 2; i++) {
      const files = await wrappedBy(i);
      expect(Object.keys(files).length, `store-${i} has encrypted volumes`).toBeGreaterThan(0);
      expect(new Set(Object.values(files).flat())).toEqual(new Set(['k1']));
    }

    // The newest key is the last line.
    await writeFile(kek, `${k1}\n${k2}\n`);
    const r = await haystack(['keys', 'rewrap', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const reports = r.stdout
      .trim()
      .split('\n')
      .map(
        (l) => JSON.parse(l) as { store: string; rewrapped: number; volumes: number; keksInUse: string[] },
      );
    expect(reports.map((x) => x.store).sort()).toEqual(['store-0', 'store-1']);
    for (const x of reports) {
      expect(x).toMatchObject({ newestKek: 'k2', keksInUse: ['k2'], reloaded: true });
      expect(x.rewrapped).toBe(x.volumes);
      expect(x.volumes).toBeGreaterThan(0);
    }
    for (let i = 0; i < 2; i++)
      expect(new Set(Object.values(await wrappedBy(i)).flat())).toEqual(new Set(['k2']));

    // Once more on one store: nothing left to do, said so.
    const again = await haystack(['keys', 'rewrap', '--store', 'store-1']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^store-1 +0 of \d+ volumes re-wrapped under k2; KEKs in use: k2\n$/);

    // A blob written after the re-wrap (same DEK, new needles) survives the restart too.
    blobs.set('after', bytes(70_000, 99));
    await writeBlob(storeClient(cluster.stores[0]!.address), 'after', blobs.get('after')!);

    // k1 retired: the stores restart with k2 alone.
    await writeFile(kek, `${k2}\n`);
    for (let i = 0; i < 2; i++) {
      await cluster.stores[i]!.stop();
      await cluster.startStore(i);
    }
    for (const [id, data] of blobs) {
      const i = id === 'after' ? 0 : Number(id.split('-')[1]);
      expect(sameBytes(await readBlob(storeClient(cluster.stores[i]!.address), id), data), id).toBe(
        'identical',
      );
    }
  });

  it('only an admin may re-wrap: a gateway or store identity is PERMISSION_DENIED, on both server paths and via grpcurl, and no key file changes', {
    timeout: 120_000,
  }, async () => {
    const before = await wrappedBy(0);
    const raw = async () =>
      Promise.all(
        (await readdir(storeDir(0)))
          .filter((n) => n.endsWith('.keys'))
          .map((n) => readFile(path.join(storeDir(0), n), 'utf8')),
      );
    const rawBefore = await raw();
    const address = cluster.stores[0]!.address;
    const gateway = await securityOf(TEST_GATEWAY);
    const otherStore = await securityOf({ role: 'store', id: 'store-1' });
    expect(await codeOf(storeClient(address, { security: gateway }).rewrapKeys({}))).toBe('PermissionDenied');
    expect(await codeOf(storeClient(address, { direct: true, security: gateway }).rewrapKeys({}))).toBe(
      'PermissionDenied',
    );
    expect(await codeOf(storeClient(address, { security: otherStore }).rewrapKeys({}))).toBe(
      'PermissionDenied',
    );
    const viaGrpcurl = await grpcurl(
      ['-d', '{}', address, 'haystack.v1.StoreService/RewrapKeys'],
      undefined,
      { role: 'store', id: 'store-1' },
    );
    expect(viaGrpcurl.code).not.toBe(0);
    expect(viaGrpcurl.stdout + viaGrpcurl.stderr).toContain('PermissionDenied');
    expect(await wrappedBy(0)).toEqual(before);
    expect(await raw()).toEqual(rawBefore);
  });

  it('a KEK_FILE without a KEK still in use is FAILED_PRECONDITION naming it, and nothing is re-wrapped', {
    timeout: 120_000,
  }, async () => {
    const k3 = newKekLine('k3');
    const before = await wrappedBy(1);
    await writeFile(kek, `${k3}\n`); // k2 wraps every key here and is gone from the file
    const err = await (await admin(1)).rewrapKeys({}).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.code).toBe(Code.FailedPrecondition);
    expect(err?.rawMessage).toMatch(/no longer holds "k2".*put it back, re-wrap, and only then remove it/);
    expect(await wrappedBy(1)).toEqual(before);
    // A damaged file: the line is named, no key material echoed.
    await writeFile(kek, `${k2}\nk4 not-a-key\n`);
    const bad = await haystack(['keys', 'rewrap', '--store', 'store-1']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(
      /FAILED_PRECONDITION.*KEK_FILE=.*entry 2: key k4 is not the base64 of exactly 32 bytes/,
    );
    expect(bad.stderr).not.toContain(k2.split(' ')[1]!);
    expect(await wrappedBy(1)).toEqual(before);
    await writeFile(kek, `${k2}\n`);
  });

  it('a store without KEKs answers FAILED_PRECONDITION: nothing to re-wrap', {
    timeout: 120_000,
  }, async () => {
    const p = await spawnServer({
      name: 'plain-store',
      args: ['store', '--listen', '127.0.0.1:0', '--data', tmpName('rewrap-plain')],
      env: { STORE_ID: 'plain', KEK_FILE: '' },
    });
    extra.push(p);
    const err = await storeClient(p.address, { security: await securityOf(TEST_ADMIN) })
      .rewrapKeys({})
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(err?.code).toBe(Code.FailedPrecondition);
    expect(err?.rawMessage).toContain('no key-encryption keys (KEK_FILE or KEKS)');
  });
});
