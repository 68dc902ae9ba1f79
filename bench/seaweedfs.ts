// SeaweedFS (https://github.com/seaweedfs/seaweedfs, Go; the best-known open
// Haystack implementation) as the comparison: 1 master and 3 volume servers on
// 127.0.0.1, every write replicated to all three (replication 002), driven by its
// own client, `weed benchmark` (master Assign, then an HTTP upload to a volume
// server that writes locally and forwards to the two replicas in parallel; reads
// look the volume up at the master once, then GET from a volume server).
// Every process is started in its own process group and stopped by its pid.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { freePort } from '../test/helpers/redis.js';

/** Figures of one `weed benchmark` run. */
export interface WeedFigure {
  opsPerSec: number;
  p50ms: number;
  p99ms: number;
  completed: number;
  failed: number;
  seconds: number;
}

/** Parses the report `weed benchmark` prints (ab-like: "Requests per second:", "  50%  1.2 ms"). */
export function parseWeedBenchmark(out: string): WeedFigure {
  const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? Number.NaN);
  return {
    opsPerSec: num(/^Requests per second:\s+([\d.]+)/m),
    p50ms: num(/^\s+50%\s+([\d.]+)/m),
    p99ms: num(/^\s+99%\s+([\d.]+)/m),
    completed: num(/^Completed requests:\s+(\d+)/m),
    failed: num(/^Failed requests:\s+(\d+)/m),
    seconds: num(/^Time taken for tests:\s+([\d.]+)/m),
  };
}

function run(file: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err)
        reject(
          new Error(
            `${path.basename(file)} ${args.join(' ')}: ${err.message}\n${String(stderr).slice(-2000)}`,
          ),
        );
      else resolve(`${String(stdout)}\n${String(stderr)}`);
    });
  });
}

async function waitFor(what: string, deadlineMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`SeaweedFS: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A running SeaweedFS: 1 master, 3 volume servers, replication 002. */
export class SeaweedCluster {
  private readonly procs: ChildProcess[] = [];
  masterHttp = '';
  /** weed's "host:httpPort.grpcPort" form of the master's address. */
  masterArg = '';
  readonly volumeUrls: string[] = [];

  private constructor(
    readonly weed: string,
    readonly dir: string,
  ) {}

  static async start(weed: string, dir: string, volumes = 3): Promise<SeaweedCluster> {
    const c = new SeaweedCluster(weed, dir);
    try {
      await c.boot(volumes);
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  /** The pids of the processes (master first), for RSS sampling. */
  get pids(): number[] {
    return this.procs.map((p) => p.pid).filter((p): p is number => p !== undefined);
  }

  private spawn(args: string[]): void {
    mkdirSync(path.join(this.dir, 'logs'), { recursive: true });
    const child = spawn(this.weed, [`-logdir=${path.join(this.dir, 'logs')}`, ...args], {
      stdio: 'ignore',
      detached: true, // its own process group: stop() signals the group by pid
    });
    child.on('error', () => {});
    this.procs.push(child);
  }

  private async boot(volumes: number): Promise<void> {
    const [mp, mg] = [await freePort(), await freePort()];
    this.masterHttp = `127.0.0.1:${mp}`;
    this.masterArg = `127.0.0.1:${mp}.${mg}`;
    mkdirSync(path.join(this.dir, 'master'), { recursive: true });
    this.spawn([
      'master',
      '-ip=127.0.0.1',
      '-ip.bind=127.0.0.1',
      `-port=${mp}`,
      `-port.grpc=${mg}`,
      `-mdir=${path.join(this.dir, 'master')}`,
      '-peers=none',
      '-defaultReplication=002',
      '-volumeSizeLimitMB=1024',
      '-telemetry=false',
    ]);
    await waitFor(
      'the master',
      60_000,
      async () => (await fetch(`http://${this.masterHttp}/cluster/status`)).ok,
    );
    for (let i = 1; i <= volumes; i++) {
      const [vp, vg] = [await freePort(), await freePort()];
      const dir = path.join(this.dir, `volume-${i}`);
      mkdirSync(dir, { recursive: true });
      this.volumeUrls.push(`127.0.0.1:${vp}`);
      this.spawn([
        'volume',
        '-ip=127.0.0.1',
        '-ip.bind=127.0.0.1',
        `-port=${vp}`,
        `-port.grpc=${vg}`,
        `-dir=${dir}`,
        '-max=16',
        `-master=${this.masterArg}`,
      ]);
    }
    await waitFor(`${volumes} volume servers to join`, 60_000, async () => {
      const s = await (await fetch(`http://${this.masterHttp}/dir/status`)).text();
      return this.volumeUrls.every((u) => s.includes(`"Url":"${u}"`));
    });
  }

  /**
   * One `weed benchmark` run (-replication=002, -collection=bench); `args` picks
   * -writeOnly/-readOnly, -n, -fsync, -list. Bounded by `timeoutMs`.
   */
  async benchmark(
    size: number,
    concurrency: number,
    args: string[],
    timeoutMs = 300_000,
  ): Promise<WeedFigure> {
    const out = await run(
      this.weed,
      [
        `-logdir=${path.join(this.dir, 'logs')}`,
        'benchmark',
        `-master=${this.masterArg}`,
        `-c=${concurrency}`,
        `-size=${size}`,
        '-replication=002',
        '-collection=bench',
        ...args,
      ],
      timeoutMs,
    );
    const f = parseWeedBenchmark(out);
    if (!(f.completed > 0))
      throw new Error(`weed benchmark ${args.join(' ')}: no completed request\n${out.slice(-1500)}`);
    return f;
  }

  /** The volume server URL (host:port) holding the volume of `fid` ("3,01637037d6"). */
  async locate(fid: string): Promise<string> {
    const vid = fid.split(',')[0];
    const j = (await (await fetch(`http://${this.masterHttp}/dir/lookup?volumeId=${vid}`)).json()) as {
      locations?: Array<{ url: string }>;
    };
    const url = j.locations?.[0]?.url;
    if (!url) throw new Error(`SeaweedFS: no location for ${fid}: ${JSON.stringify(j)}`);
    return url;
  }

  /** TERM each process group (volumes first), KILL after 10 s; removes the data unless keep. */
  async stop(keep = false): Promise<void> {
    for (const p of [...this.procs].reverse()) {
      if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) {
        try {
          process.kill(-p.pid, 'SIGTERM');
        } catch {
          // already gone
        }
      }
    }
    await Promise.all(
      this.procs.map(
        (p) =>
          new Promise<void>((resolve) => {
            if (p.exitCode !== null || p.signalCode !== null) return resolve();
            const t = setTimeout(() => {
              try {
                if (p.pid !== undefined) process.kill(-p.pid, 'SIGKILL');
              } catch {
                // gone
              }
            }, 10_000);
            p.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
          }),
      ),
    );
    if (!keep) {
      for (const d of ['master', 'volume-1', 'volume-2', 'volume-3']) {
        rmSync(path.join(this.dir, d), { recursive: true, force: true });
      }
    }
  }
}
