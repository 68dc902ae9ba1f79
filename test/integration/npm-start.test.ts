import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { pidfilePath } from '../../internal/cli/dev-pidfile.js';
import { PROJECT_ROOT } from '../../internal/cli/processes.js';
import { devPorts } from '../helpers/dev-cluster.js';
import { exec, processAlive, tmpName } from '../helpers/tools.js';

/** Every descendant of `root` (pid → command line), from /proc via ps. */
async function descendants(root: number): Promise<Map<number, string>> {
  const ps = await exec('ps', ['-e', '-o', 'pid=,ppid=,args=']);
  const kids = new Map<number, { pid: number; args: string }[]>();
  for (const line of ps.stdout.split('\n')) {
    const m = /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [pid, ppid] = [Number(m[1]), Number(m[2])];
    kids.set(ppid, [...(kids.get(ppid) ?? []), { pid, args: m[3]! }]);
  }
  const out = new Map<number, string>();
  const walk = (p: number) => {
    for (const k of kids.get(p) ?? []) {
      out.set(k.pid, k.args);
      walk(k.pid);
    }
  };
  walk(root);
  return out;
}

async function until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * `npm start` as a user runs it in the repository (`npm start -- --data DIR`, on free ports
 * through the DEV_* variables `haystack dev` reads): it installs what is missing (a no-op here,
 * the suite's bootstrap and build ran; node_modules is never reinstalled under a running suite),
 * prints the PATH line whose folder holds a working grpcurl, and a SIGTERM to the npm process
 * alone (`npm start &` then `kill %1`) stops every server and removes the pidfile.
 */
describe('npm start', () => {
  let npm: ChildProcess | undefined;
  let tree = new Map<number, string>();
  let dataDir: string | undefined;

  afterAll(async () => {
    // Whatever this test started and did not stop (a failed run): stop it here. The tree is read
    // before the SIGTERM (after it, npm's children are orphans no longer under npm.pid), and the
    // supervisor's pidfile catches a `haystack dev` already orphaned by then.
    for (const pid of (await descendants(npm?.pid ?? -1)).keys()) tree.set(pid, '');
    const pidfile = dataDir === undefined ? undefined : pidfilePath(dataDir);
    const supervisor = pidfile && existsSync(pidfile) ? Number(readFileSync(pidfile, 'utf8').trim()) : 0;
    if (supervisor > 0) {
      tree.set(supervisor, '');
      for (const pid of (await descendants(supervisor)).keys()) tree.set(pid, '');
      if (processAlive(supervisor)) process.kill(supervisor, 'SIGTERM');
    }
    if (npm?.exitCode === null) npm.kill('SIGTERM');
    await until(
      'left-overs gone after SIGTERM',
      () => [...tree.keys()].every((p) => !processAlive(p)),
      30_000,
    ).catch(() => {
      for (const pid of tree.keys()) if (processAlive(pid)) process.kill(pid, 'SIGKILL');
    });
  });

  it('prints the PATH line (with a grpcurl that runs) and stops every server on SIGTERM to npm', async () => {
    // `npm start` runs `npm ci` when node_modules does not match the lockfile: never here, where
    // node_modules may be shared with other checkouts and this suite's own processes use it.
    const lib = pathToFileURL(path.join(PROJECT_ROOT, 'scripts/lib.mjs')).href;
    const { npmDepsCurrent } = (await import(lib)) as { npmDepsCurrent(): boolean };
    expect(npmDepsCurrent(), 'node_modules does not match package-lock.json: run npm ci first').toBe(true);
    const ports = await devPorts();
    dataDir = tmpName('npm-start');
    let out = '';
    let err = '';
    npm = spawn('npm', ['start', '--', '--data', dataDir], {
      cwd: PROJECT_ROOT,
      env: { ...process.env, ...ports.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    npm.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
    });
    npm.stderr?.setEncoding('utf8').on('data', (d: string) => {
      err += d;
    });
    const exited = new Promise<number | string | null>((r) => npm?.once('exit', (c, s) => r(c ?? s)));
    let code: number | string | null | undefined;
    void exited.then((c) => {
      code = c;
    });
    // The tool check and an up-to-date (incremental) tsc build come first: slow under load.
    await until(
      'cluster ready',
      () => {
        if (code !== undefined) throw new Error(`npm start exited (${code}):\n${err.slice(-4000)}`);
        return out.includes('cluster ready');
      },
      300_000,
    );
    // The process tree: npm → (sh →) node scripts/start.mjs → haystack dev → its servers. Read
    // at once, so that afterAll stops all of it if an expectation below fails.
    tree = await descendants(npm.pid!);
    // Nothing was (re)installed: npm's packages and the tools were there.
    expect(err).not.toContain('npm ci');
    expect(err).not.toContain('[bootstrap] installing');

    // The PATH line, run as printed in a shell whose PATH has no grpcurl of its own.
    const line = /^\s*(export PATH="[^"\n]*")\s*$/m.exec(out)?.[1];
    expect(line, out).toBe(`export PATH="${path.join(PROJECT_ROOT, 'test/env/bin')}:$PATH"`);
    const basePath = (process.env.PATH ?? '')
      .split(path.delimiter)
      .filter((d) => d && !existsSync(path.join(d, 'grpcurl')))
      .join(path.delimiter);
    const noGrpcurl = await exec('sh', ['-c', 'command -v grpcurl'], { env: { PATH: basePath } });
    expect(noGrpcurl.code).not.toBe(0);
    const sh = await exec('sh', ['-c', `${line}\ncommand -v grpcurl && grpcurl -version 2>&1`], {
      env: { PATH: basePath },
    });
    expect(sh.code, sh.stdout).toBe(0);
    expect(sh.stdout).toContain(path.join(PROJECT_ROOT, 'test/env/bin/grpcurl'));
    expect(sh.stdout).toMatch(/^grpcurl /m);

    const args = [...tree.values()];
    expect(
      args.some((a) => a.includes('scripts/start.mjs')),
      args.join('\n'),
    ).toBe(true);
    const supervisor = [...tree].find(([, a]) => /haystack\.js dev\b/.test(a))?.[0];
    expect(supervisor, args.join('\n')).toBeDefined();
    expect(readFileSync(pidfilePath(dataDir), 'utf8').trim()).toBe(String(supervisor));
    const servers = [...(await descendants(supervisor!)).keys()];
    // 3 directories, 5 stores, replication, 2 gateways, envoy, 2 redis.
    expect(servers.length, args.join('\n')).toBeGreaterThanOrEqual(14);

    // SIGTERM to npm alone, as `kill %1` after `npm start &` sends it.
    npm.kill('SIGTERM');
    await until('npm exited', () => code !== undefined, 90_000);
    await until(
      `every process of npm start gone (${[...tree.keys()].filter(processAlive).join(' ')})`,
      () => [...tree.keys()].every((p) => !processAlive(p)),
      90_000,
    );
    expect(existsSync(pidfilePath(dataDir))).toBe(false);
  }, 480_000);
});
