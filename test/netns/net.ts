import { execFile } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';

/**
 * A private network of Linux network namespaces for one test file (root only):
 * a bridge `hsnb<slot>` in the host namespace holding 10.77.<slot>.1/24, and one
 * namespace `hsn<slot>-<name>` per component, joined to the bridge by a veth pair
 * (`hsn<slot>v<k>` outside, `eth0` inside) with its own address 10.77.<slot>.<10+k>.
 * The host namespace (the test, Envoy) reaches every component over the bridge.
 *
 * Partitions are blackhole routes (`ip route add blackhole <peer>/32`) inside the
 * namespaces: packets to the peer are dropped at the sender, new connections fail
 * and established ones stall without a reset, as when a switch drops traffic. A
 * cut is symmetric (a route in each of the two namespaces) and touches only that
 * pair: the rest of each component's links keep working. `tc netem` and iptables
 * are not available on these machines; routes are.
 *
 * A slot is claimed by a lock file holding the owner's pid; a slot whose owner is
 * dead is stale: its namespaces (and any process left inside) and bridge are
 * removed before it is reused.
 */
export class NetnsNet {
  private readonly members = new Map<string, { ns: string; ip: string; k: number }>();
  private readonly cuts = new Set<string>();

  private constructor(
    readonly slot: number,
    private readonly lockFile: string,
  ) {}

  static readonly LOCK_DIR = '/tmp/haystack-netns';

  get prefix(): string {
    return `hsn${this.slot}-`;
  }

  get bridge(): string {
    return `hsnb${this.slot}`;
  }

  /** The host namespace's address on the bridge (the test and Envoy). */
  get hostIp(): string {
    return `10.77.${this.slot}.1`;
  }

  /** Claims a free slot (1–200), removes what a dead owner left, creates the bridge. */
  static async create(): Promise<NetnsNet> {
    if (process.getuid?.() !== 0) throw new Error('network namespaces need root');
    mkdirSync(NetnsNet.LOCK_DIR, { recursive: true });
    for (let slot = 1; slot <= 200; slot++) {
      const lock = path.join(NetnsNet.LOCK_DIR, `slot-${slot}.pid`);
      if (!claim(lock)) continue;
      const net = new NetnsNet(slot, lock);
      await net.clean();
      await ip(['link', 'add', net.bridge, 'type', 'bridge']);
      await ip(['addr', 'add', `${net.hostIp}/24`, 'dev', net.bridge]);
      await ip(['link', 'set', net.bridge, 'up']);
      return net;
    }
    throw new Error(`no free network slot under ${NetnsNet.LOCK_DIR}`);
  }

  /** Adds a namespace for component `name`; returns its address. */
  async add(name: string): Promise<string> {
    if (this.members.has(name)) throw new Error(`${name} already has a namespace`);
    const k = this.members.size;
    const ns = `${this.prefix}${name}`;
    const ipAddr = `10.77.${this.slot}.${10 + k}`;
    const veth = `hsn${this.slot}v${k}`;
    await ip(['netns', 'add', ns]);
    this.members.set(name, { ns, ip: ipAddr, k });
    await ip(['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await ip(['link', 'set', veth, 'master', this.bridge]);
    await ip(['link', 'set', veth, 'up']);
    await ip(['-n', ns, 'addr', 'add', `${ipAddr}/24`, 'dev', 'eth0']);
    await ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
    await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    return ipAddr;
  }

  ipOf(name: string): string {
    return this.member(name).ip;
  }

  /** The command prefix that runs a program inside `name`'s namespace. */
  wrapper(name: string): string[] {
    return ['ip', 'netns', 'exec', this.member(name).ns];
  }

  /** Cuts every link between `a` and `b` (both directions). */
  async cut(a: string, b: string): Promise<void> {
    const key = pairKey(a, b);
    if (this.cuts.has(key)) return;
    await ip(['-n', this.member(a).ns, 'route', 'add', 'blackhole', `${this.member(b).ip}/32`]);
    await ip(['-n', this.member(b).ns, 'route', 'add', 'blackhole', `${this.member(a).ip}/32`]);
    this.cuts.add(key);
  }

  /** Cuts `side` from `others`, pair by pair (a partition of the set side ∪ others). */
  async split(side: string[], others: string[]): Promise<void> {
    for (const a of side) for (const b of others) await this.cut(a, b);
  }

  /** Removes every cut. */
  async heal(): Promise<void> {
    for (const key of [...this.cuts]) {
      const [a, b] = key.split('|') as [string, string];
      await ip(['-n', this.member(a).ns, 'route', 'del', 'blackhole', `${this.member(b).ip}/32`]);
      await ip(['-n', this.member(b).ns, 'route', 'del', 'blackhole', `${this.member(a).ip}/32`]);
      this.cuts.delete(key);
    }
  }

  /** The cuts in force, as "a|b". */
  get activeCuts(): string[] {
    return [...this.cuts];
  }

  /** Removes every namespace, the bridge and the slot's lock (processes must be stopped first). */
  async destroy(): Promise<void> {
    await this.clean();
    this.members.clear();
    this.cuts.clear();
    rmSync(this.lockFile, { force: true });
  }

  /** Deletes this slot's namespaces (killing any process left inside) and its bridge. */
  private async clean(): Promise<void> {
    const list = await run('ip', ['netns', 'list']);
    const names = list
      .split('\n')
      .map((l) => l.split(' ')[0] ?? '')
      .filter((n) => n.startsWith(this.prefix));
    for (const ns of names) {
      // A process left in a stale namespace is one this harness started in a run that died.
      const pids = await run('ip', ['netns', 'pids', ns]).catch(() => '');
      for (const pid of pids.split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone already
        }
      }
      await ip(['netns', 'delete', ns]).catch(() => {});
    }
    await ip(['link', 'delete', this.bridge]).catch(() => {});
  }

  private member(name: string) {
    const m = this.members.get(name);
    if (!m) throw new Error(`no namespace for ${name}`);
    return m;
  }
}

const pairKey = (a: string, b: string) => `${a}|${b}`;

/** Takes the lock file when absent or when its pid is dead; false when a live process holds it. */
function claim(lock: string): boolean {
  try {
    const fd = openSync(lock, 'wx');
    writeSync(fd, String(process.pid));
    closeSync(fd);
    return true;
  } catch {
    const owner = Number(readFileSync(lock, 'utf8').trim());
    if (owner > 0 && alive(owner)) return false;
    rmSync(lock, { force: true });
    try {
      const fd = openSync(lock, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return true;
    } catch {
      return false;
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')}: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
  });
}

const ip = (args: string[]) => run('ip', args);
