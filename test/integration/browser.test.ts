import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { deflateSync } from 'node:zlib';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findBinary } from '../../internal/cli/tools.js';
import { buildWeb } from '../../internal/edge/web-build.js';
import { Cluster } from '../helpers/cluster.js';
import { exec, tmpName } from '../helpers/tools.js';

const RESULTS = path.resolve('test-results');

function crc32(buf: Buffer): number {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

/** A real PNG: a w×h RGB gradient. */
function makePng(w: number, h: number, seed = 0): Buffer {
  const rows: Buffer[] = [];
  for (let y = 0; y < h; y++) {
    const row = Buffer.alloc(1 + w * 3);
    for (let x = 0; x < w; x++) {
      row[1 + x * 3] = (x * 255) / w;
      row[2 + x * 3] = (y * 255) / h;
      row[3 + x * 3] = (seed * 40 + 128) & 0xff;
    }
    rows.push(row);
  }
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function chromiumPath(): string {
  const p = findBinary('chromium') ?? (existsSync('/usr/bin/chromium') ? '/usr/bin/chromium' : undefined);
  if (!p) throw new Error('chromium not found: run test/env/bootstrap.sh (npm test does)');
  return p;
}

describe('the dashboard sources', () => {
  it('type-check against the DOM library (web/tsconfig.json)', async () => {
    const res = await exec(path.resolve('node_modules/.bin/tsc'), ['-p', 'web/tsconfig.json'], {
      timeoutMs: 60_000,
    });
    expect(res.stdout + res.stderr).toBe('');
    expect(res.code).toBe(0);
  });
});

describe('the dashboard in headless Chromium, through Envoy', () => {
  let cluster: Cluster;
  let context: BrowserContext;
  let page: Page;

  beforeAll(async () => {
    const ui = await buildWeb(tmpName('web'));
    cluster = await Cluster.start({ gateways: 2, gatewayEnv: { UI_DIR: ui } });
    context = await chromium.launchPersistentContext(mkdtempSync(path.join(tmpdir(), 'chromium-')), {
      executablePath: chromiumPath(),
      headless: true,
      viewport: { width: 1400, height: 1000 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
    mkdirSync(RESULTS, { recursive: true });
  });
  afterAll(async () => {
    await context?.close();
    await cluster?.stop();
  });

  it('shows the cluster, uploads by drag and drop with progress, shows the photo in the gallery, deletes it', async () => {
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    const res = await page.goto(`${cluster.url}/`);
    expect(res?.url()).toBe(`${cluster.url}/ui/`);
    expect(res?.status()).toBe(200);

    // Status: three directories (one leader), three healthy stores, cache.
    await page.locator('#conn.ok').waitFor();
    await expect.poll(() => page.locator('#directories tbody tr').count()).toBe(3);
    await expect.poll(() => page.locator('#directories .role-LEADER').count()).toBe(1);
    await expect.poll(() => page.locator('#stores .health-HEALTHY').count()).toBe(3);
    await expect.poll(() => page.locator('#cache').textContent()).toContain('redis');

    // Drag and drop two PNGs onto the drop zone.
    const pngs = [makePng(320, 200, 1), makePng(240, 240, 2)];
    // (A string: the page's DOM types are not this program's.)
    const files = JSON.stringify(pngs.map((p, i) => ({ name: `photo-${i}.png`, bytes: [...p] })));
    await page.evaluate(`(() => {
      const dt = new DataTransfer();
      for (const f of ${files}) dt.items.add(new File([new Uint8Array(f.bytes)], f.name, { type: 'image/png' }));
      const drop = document.querySelector('#drop');
      drop.dispatchEvent(new DragEvent('dragenter', { dataTransfer: dt, bubbles: true, cancelable: true }));
      drop.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    })()`);
    await expect.poll(() => page.locator('#uploads li.done').count(), { timeout: 15_000 }).toBe(2);
    const ids = await page
      .locator('#uploads li.done')
      .evaluateAll((lis) => lis.map((l) => (l as unknown as { dataset: { id: string } }).dataset.id));
    expect(
      await page
        .locator('#uploads li.done progress')
        .first()
        .evaluate((p) => (p as unknown as { value: number }).value),
    ).toBeGreaterThan(0);

    // The gallery loads them through /blobs/{id}: real decoded images.
    for (const [i, w] of [
      [0, 240],
      [1, 320],
    ] as const) {
      const img = page.locator(`.tile[data-id="${ids[i]}"] img`);
      await img.waitFor();
      await expect
        .poll(() => img.evaluate((e) => (e as unknown as { naturalWidth: number }).naturalWidth))
        .toBe(w);
    }
    // The status view counts them.
    await expect
      .poll(() => page.locator('#dir-summary').textContent(), { timeout: 10_000 })
      .toMatch(/ 2 blobs/);
    await page.screenshot({ path: path.join(RESULTS, 'dashboard.png'), fullPage: true });

    // Delete one from the gallery.
    await page.locator(`.tile[data-id="${ids[0]}"] button`).click();
    await expect.poll(() => page.locator(`.tile[data-id="${ids[0]}"]`).count()).toBe(0);
    expect((await fetch(`${cluster.url}/blobs/${ids[0]}`)).status).toBe(404);
    await expect
      .poll(() => page.locator('#dir-summary').textContent(), { timeout: 10_000 })
      .toMatch(/ 1 blobs/);
    await page.screenshot({ path: path.join(RESULTS, 'dashboard-after-delete.png'), fullPage: true });
    expect(errors).toEqual([]);
  });
});
