import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import type { Redis, RedisOptions } from 'ioredis';
import { waitForPort } from '../../internal/cli/tools.js';
import { killOnExit } from '../../internal/common/child-reaper.js';
import { newRedisClient } from '../../internal/common/redis-client.js';
import { newRedisUser, redisAclArgs, redisUrl } from '../../internal/security/redis-acl.js';
import { type RedisTlsFiles, redisTlsServerArgs } from '../../internal/security/redis-tls.js';
import { securityOf, serverCertificateFiles } from './pki.js';
import { tmpName, tool } from './tools.js';

export { freePort } from './ports.js';

import { freePort } from './ports.js';

/**
 * `client` with a listener for its 'error' events, which ioredis otherwise prints to stderr
 * ("[ioredis] Unhandled error event") on every failed reconnection once a test has stopped
 * or killed Redis. Nothing is lost: a command that meets the error still rejects with it.
 */
export function quiet<C extends Redis>(client: C): C {
  client.on('error', () => {});
  return client;
}

/**
 * An ioredis client of a test's own (its checks, an operator's view), quiet as above, with the
 * services' workarounds (internal/common/redis-client.ts): a fault test's client outlives Redis
 * restarts too.
 */
export function redisClient(url: string, opts: RedisOptions = {}): Redis {
  return quiet(newRedisClient(url, opts));
}

/** A real redis-server child process on a free loopback port; restartable on the same port. */
export class RedisProcess {
  private child: ChildProcess | undefined;
  readonly dir = tmpName('redis');
  /** An ACL user with a password: the default user is off, as in dev and deploy/. */
  readonly user = newRedisUser('haystack');
  /** An operator with every command (CONFIG, FLUSHDB): for test and bench tooling only. */
  readonly admin = newRedisUser('admin');

  private constructor(
    readonly port: number,
    /** Its TLS server certificate when it serves TLS only (start({ tls: true })). */
    readonly tls: RedisTlsFiles | undefined,
  ) {}

  /** `tls`: serve TLS only (the plain port closed), client certificates from the test file's CA required. */
  static async start(opts: { tls?: boolean } = {}): Promise<RedisProcess> {
    const port = await freePort();
    const r = new RedisProcess(port, opts.tls ? await serverCertificateFiles(`redis-${port}`) : undefined);
    mkdirSync(r.dir, { recursive: true });
    await r.restart();
    return r;
  }

  get url(): string {
    return redisUrl(this.user, '127.0.0.1', this.port, this.tls !== undefined);
  }

  /** The operator's URL (every command). */
  get adminUrl(): string {
    return redisUrl(this.admin, '127.0.0.1', this.port, this.tls !== undefined);
  }

  /**
   * ioredis options a test's own client needs: when this Redis serves TLS, the CA and
   * an operator's certificate from the test file's CA (as the services present theirs).
   */
  async clientOptions(): Promise<RedisOptions> {
    if (!this.tls) return {};
    const s = await securityOf({ role: 'admin', id: 'redis-client' });
    if (s.mode !== 'mtls') return {};
    return { tls: { ca: s.ca, cert: s.cert, key: s.key } };
  }

  /** The URL without credentials (to show the default user is refused). */
  get anonymousUrl(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async restart(): Promise<void> {
    this.child = spawn(
      tool('redis-server'),
      [
        '--bind',
        '127.0.0.1',
        ...(this.tls ? redisTlsServerArgs(this.port, this.tls) : ['--port', String(this.port)]),
        '--dir',
        this.dir,
        '--save',
        '',
        '--appendonly',
        'no',
        ...redisAclArgs(this.user),
        '--user',
        this.admin.name,
        'on',
        '~*',
        '&*',
        '+@all',
        `>${this.admin.password}`,
      ],
      { stdio: 'ignore' },
    );
    killOnExit(this.child);
    await waitForPort('127.0.0.1', this.port, 10_000);
  }

  /** SIGSTOP: connections stay open, commands get no answer (a stalled Redis) until resume(). */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  /** kill -9. */
  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  }

  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    await exited;
  }
}
