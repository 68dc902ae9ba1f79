import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import {
  BlobState,
  type PlacementBytes,
  type ShardStats,
  StoreHealth,
  type VolumeStats,
} from '../../gen/haystack/v1/common_pb.js';
import {
  type HeartbeatRequest,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
  type StoreCommand,
  StoreCommandSchema,
} from '../../gen/haystack/v1/directory_pb.js';
import { type LogEntry, type StoreRecord, StoreRecordSchema } from '../../gen/haystack/v1/metadata_pb.js';
import type { AllocationCandidate } from './allocation.js';
import { evaluateHealth } from './health.js';
import type { DirectoryNode } from './node.js';

/** Tombstones per DeleteBlobsCommand. */
const DELETE_BATCH = 1000;

interface LiveStore {
  storeId: string;
  address: string;
  zone: string;
  capacityBytes: bigint;
  freeBytes: bigint;
  volumes: VolumeStats[];
  /** Erasure-coded shards, from the last heartbeat. */
  shards?: ShardStats;
  /** Live needle bytes per placement group, from the last heartbeat. */
  placementBytes?: PlacementBytes;
  writable: boolean;
  /** Monotonic ms of the last heartbeat (or of taking office, for a grace period). */
  lastBeat: number;
  streamOpen: boolean;
  streamEnded: boolean;
  /** The open stream, to push commands or end it. */
  stream: StreamHandle | null;
  /** Commands sent and not yet reported done: id → blob ids, sent time. */
  inflight: Map<bigint, { blobIds: string[]; sentAt: number }>;
  /** Free bytes as last recorded in the log. */
  loggedFree: bigint;
  /** Volume count as last recorded in the log (-1: not yet). */
  loggedVolumes?: number;
  /** Wall-clock ms of the last heartbeat received (0: none since taking office). */
  beatAtMs?: number;
  /** Wall-clock ms of the last StoreRegistered logged for it. */
  loggedAtMs?: number;
}

interface StreamHandle {
  id: number;
  push(resp: HeartbeatResponse): void;
  end(err?: Error): void;
}

/**
 * The leader's live view of the stores: heartbeat streams, health evaluation,
 * tombstone delivery. Everything that must survive a change of leader goes
 * through the log (StoreRegistered, StoreHealthChanged, ReplicasChanged for
 * confirmed tombstones); the rest (free space between registrations, in-flight
 * commands) is rebuilt from heartbeats by each new leader.
 */
export class StoreRegistry {
  private live = new Map<string, LiveStore>();
  private streamSeq = 0;
  private commandSeq = 0n;
  /** Stores with a health or registration change proposed and not settled yet. */
  private proposing = new Set<string>();
  /** "store\0blob" tombstone confirmations appended and not yet applied. */
  private confirming = new Set<string>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly node: DirectoryNode) {}

  private get cfg() {
    return this.node.cfg;
  }

  /** A new leader: every store the log knows gets a grace period to reconnect. */
  onLeaderReady(): void {
    this.live.clear();
    this.proposing.clear();
    this.confirming.clear();
    const now = performance.now();
    for (const rec of this.node.state.stores.values()) {
      if (rec.health === StoreHealth.DOWN || rec.health === StoreHealth.UNSPECIFIED) continue;
      this.live.set(rec.storeId, {
        storeId: rec.storeId,
        address: rec.address,
        zone: rec.zone,
        capacityBytes: rec.capacityBytes,
        freeBytes: rec.freeBytes,
        volumes: rec.volumes,
        shards: rec.shards,
        placementBytes: rec.placementBytes,
        writable: true,
        lastBeat: rec.health === StoreHealth.DEGRADED ? now - this.cfg.storeDegradedAfterMs : now,
        streamOpen: false,
        streamEnded: false,
        stream: null,
        inflight: new Map(),
        loggedFree: rec.freeBytes,
      });
    }
    const every = Math.max(20, Math.min(this.cfg.heartbeatIntervalMs, this.cfg.storeDegradedAfterMs) / 4);
    this.timer = setInterval(() => this.evaluate(), every);
    this.timer.unref();
  }

  onLeaderStop(reason: string): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const leader = this.node.leader();
    for (const l of this.live.values()) {
      l.stream?.end(
        new ConnectError(
          `directory ${this.node.id} stopped leading (${reason})${leader && leader.id !== this.node.id ? `; the leader is ${leader.id} at ${leader.address}` : ''}`,
          Code.Unavailable,
        ),
      );
    }
    this.live.clear();
  }

  /** Applied entries that matter here: deletions produce tombstones to push. */
  onApplied(entry: LogEntry): void {
    if (!this.node.isServingLeader()) return;
    const c = entry.change;
    if (c.case === 'blobDeleted') {
      const blob = this.node.state.blobs.get(c.value.blobId);
      for (const r of blob?.replicas ?? []) this.pushCommands(r.storeId);
    } else if (c.case === 'replicasChanged') {
      for (const s of c.value.removedStoreIds) this.confirming.delete(`${s}\0${c.value.blobId}`);
    }
  }

  /** Health as the leader sees it now (the stricter of the committed and the live one). */
  currentHealth(storeId: string): StoreHealth {
    const committed = this.node.state.storeHealth(storeId);
    const l = this.live.get(storeId);
    const liveHealth = l ? this.liveHealth(l) : StoreHealth.DOWN;
    return worse(committed, liveHealth);
  }

  private liveHealth(l: LiveStore): StoreHealth {
    return evaluateHealth({
      streamOpen: l.streamOpen,
      streamEnded: l.streamEnded,
      sinceLastHeartbeatMs: performance.now() - l.lastBeat,
      degradedAfterMs: this.cfg.storeDegradedAfterMs,
      downAfterMs: this.cfg.storeDownAfterMs,
    });
  }

  candidates(): AllocationCandidate[] {
    const out: AllocationCandidate[] = [];
    for (const rec of this.node.state.stores.values()) {
      const l = this.live.get(rec.storeId);
      out.push({
        storeId: rec.storeId,
        address: l?.address ?? rec.address,
        zone: l?.zone ?? rec.zone,
        health: this.currentHealth(rec.storeId),
        writable: l?.writable ?? false,
        freeBytes: l?.freeBytes ?? rec.freeBytes,
        draining: rec.draining,
      });
    }
    return out;
  }

  /**
   * The leader's live view over a logged record (for status): the volumes, space and time of
   * the last heartbeat, which the log records only when they change noticeably.
   */
  overlayLive(rec: StoreRecord): void {
    const l = this.live.get(rec.storeId);
    if (!l?.beatAtMs) return;
    rec.volumes = l.volumes;
    if (l.shards) rec.shards = l.shards;
    if (l.placementBytes) rec.placementBytes = l.placementBytes;
    rec.capacityBytes = l.capacityBytes;
    rec.freeBytes = l.freeBytes;
    rec.lastHeartbeatMs = BigInt(l.beatAtMs);
  }

  /** Stores with an open heartbeat stream (for status). */
  connected(): string[] {
    return [...this.live.values()].filter((l) => l.streamOpen).map((l) => l.storeId);
  }

  /** Records health changes in the log. */
  evaluate(): void {
    if (!this.node.isServingLeader()) return;
    for (const rec of this.node.state.stores.values()) {
      const l = this.live.get(rec.storeId);
      const h = l ? this.liveHealth(l) : StoreHealth.DOWN;
      if (h === rec.health || this.proposing.has(rec.storeId)) continue;
      this.node.log.info(
        { store: rec.storeId, from: StoreHealth[rec.health], to: StoreHealth[h] },
        'store health changed',
      );
      this.propose(rec.storeId, { case: 'storeHealthChanged', value: { storeId: rec.storeId, health: h } });
    }
  }

  /** The Heartbeat stream of one store. */
  async *heartbeat(
    requests: AsyncIterable<HeartbeatRequest>,
    ctx: HandlerContext,
  ): AsyncGenerator<HeartbeatResponse> {
    const it = requests[Symbol.asyncIterator]();
    const first = await it.next();
    if (first.done) return;
    this.node.requireLeader();
    const hello = first.value;
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(hello.storeId)) {
      throw new ConnectError(`invalid store id ${JSON.stringify(hello.storeId)}`, Code.InvalidArgument);
    }
    const storeId = hello.storeId;
    const queue: HeartbeatResponse[] = [];
    let wake: (() => void) | null = null;
    let ended: { err?: Error } | null = null;
    const handle: StreamHandle = {
      id: ++this.streamSeq,
      push: (resp) => {
        queue.push(resp);
        wake?.();
      },
      end: (err) => {
        ended = err ? { err } : {};
        wake?.();
      },
    };
    const prev = this.live.get(storeId);
    prev?.stream?.end(new ConnectError(`store ${storeId} opened a newer heartbeat stream`, Code.Aborted));
    const l: LiveStore = {
      storeId,
      address: hello.address,
      zone: hello.zone,
      capacityBytes: hello.capacityBytes,
      freeBytes: hello.freeBytes,
      volumes: hello.volumes,
      shards: hello.shards,
      placementBytes: hello.placementBytes,
      writable: hello.writable,
      lastBeat: performance.now(),
      streamOpen: true,
      streamEnded: false,
      stream: handle,
      // Commands sent on an older stream may have been lost with it: send again.
      inflight: new Map(),
      loggedFree: prev?.loggedFree ?? -1n,
    };
    this.live.set(storeId, l);
    this.node.log.info(
      { store: storeId, address: hello.address, zone: hello.zone },
      'store heartbeat stream opened',
    );
    this.onBeat(l, hello);

    const closeStream = (why: string) => {
      const cur = this.live.get(storeId);
      if (cur?.stream !== handle) return;
      cur.streamOpen = false;
      cur.streamEnded = true;
      cur.stream = null;
      this.node.log.warn({ store: storeId, why }, 'store heartbeat stream ended: store is DOWN');
      this.evaluate();
    };
    void (async () => {
      try {
        for (;;) {
          const r = await it.next();
          if (r.done) break;
          const cur = this.live.get(storeId);
          if (cur?.stream !== handle) break;
          this.onBeat(cur, r.value);
        }
        closeStream('stream closed by the store');
      } catch (err) {
        closeStream(err instanceof Error ? err.message : String(err));
      }
      handle.end();
    })();
    ctx.signal.addEventListener('abort', () => {
      closeStream('stream cancelled');
      handle.end();
    });

    while (true) {
      while (queue.length > 0) yield queue.shift() as HeartbeatResponse;
      const e = ended as { err?: Error } | null;
      if (e) {
        if (e.err) throw e.err;
        return;
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = null;
    }
  }

  private onBeat(l: LiveStore, req: HeartbeatRequest): void {
    l.lastBeat = performance.now();
    l.beatAtMs = Date.now();
    l.capacityBytes = req.capacityBytes;
    l.freeBytes = req.freeBytes;
    l.volumes = req.volumes;
    l.shards = req.shards;
    l.placementBytes = req.placementBytes;
    l.writable = req.writable;
    l.address = req.address || l.address;
    l.zone = req.zone;
    for (const id of req.completedCommandIds) this.completed(l, id);
    this.maybeRegister(l);
    if (this.node.state.storeHealth(l.storeId) !== StoreHealth.HEALTHY) this.evaluate();
    const commands = this.commandsFor(l, true);
    l.stream?.push(this.answer(commands));
  }

  /** Logs a StoreRegistered when the store is new, moved, or its space changed noticeably. */
  private maybeRegister(l: LiveStore): void {
    const rec = this.node.state.stores.get(l.storeId);
    const freeMoved =
      l.loggedFree < 0n || (l.capacityBytes > 0n && abs(l.freeBytes - l.loggedFree) * 20n > l.capacityBytes); // > 5 %
    const changed =
      !rec ||
      rec.address !== l.address ||
      rec.zone !== l.zone ||
      freeMoved ||
      l.volumes.length !== (l.loggedVolumes ?? rec.volumes.length) ||
      // Logged again now and then, so a follower's status shows a recent heartbeat too.
      Date.now() - (l.loggedAtMs ?? Number(rec.lastHeartbeatMs)) >
        Math.max(10_000, 2 * this.cfg.heartbeatIntervalMs);
    if (!changed || this.proposing.has(l.storeId)) return;
    const health = this.liveHealth(l);
    if (rec && rec.health !== health) {
      // A registration carries the health too: say so, as evaluate() does for its changes.
      this.node.log.info(
        { store: l.storeId, from: StoreHealth[rec.health], to: StoreHealth[health], via: 'registration' },
        'store health changed',
      );
    }
    const logged = l.freeBytes;
    const loggedVolumes = l.volumes.length;
    const at = Date.now();
    this.propose(
      l.storeId,
      {
        case: 'storeRegistered',
        value: {
          store: create(StoreRecordSchema, {
            storeId: l.storeId,
            address: l.address,
            zone: l.zone,
            capacityBytes: l.capacityBytes,
            freeBytes: l.freeBytes,
            health,
            lastHeartbeatMs: BigInt(at),
            volumes: l.volumes,
            shards: l.shards,
            placementBytes: l.placementBytes,
          }),
        },
      },
      () => {
        l.loggedFree = logged;
        l.loggedVolumes = loggedVolumes;
        l.loggedAtMs = at;
      },
    );
  }

  /** One change per store at a time; the next evaluation sees its effect. */
  private propose(storeId: string, change: Parameters<DirectoryNode['propose']>[0], onOk?: () => void): void {
    this.proposing.add(storeId);
    this.node.propose(change).then(
      () => {
        this.proposing.delete(storeId);
        onOk?.();
        this.evaluate();
      },
      () => this.proposing.delete(storeId),
    );
  }

  /** The store finished a command: record its confirmed tombstones in the log. */
  private completed(l: LiveStore, id: bigint): void {
    const cmd = l.inflight.get(id);
    if (!cmd) return;
    l.inflight.delete(id);
    for (const blobId of cmd.blobIds) {
      const blob = this.node.state.blobs.get(blobId);
      if (!blob || blob.state !== BlobState.DELETED || !blob.replicas.some((r) => r.storeId === l.storeId))
        continue;
      const key = `${l.storeId}\0${blobId}`;
      if (this.confirming.has(key)) continue;
      this.confirming.add(key);
      this.node
        .propose({ case: 'replicasChanged', value: { blobId, removedStoreIds: [l.storeId] } })
        .catch(() => this.confirming.delete(key));
    }
  }

  /** Pushes pending tombstones to a connected store now. */
  pushCommands(storeId: string): void {
    const l = this.live.get(storeId);
    if (!l?.stream) return;
    const commands = this.commandsFor(l, false);
    if (commands.length === 0) return;
    l.stream.push(this.answer(commands));
  }

  /** Queues an arbitrary command (e.g. compaction) for a store; false when it is not connected. */
  sendCommand(storeId: string, command: StoreCommand['command']): boolean {
    const l = this.live.get(storeId);
    if (!l?.stream) return false;
    l.stream.push(
      this.answer([
        create(StoreCommandSchema, { commandId: this.nextCommandId(), term: this.node.leadTerm, command }),
      ]),
    );
    return true;
  }

  /** A heartbeat answer carrying `commands` (and the term, interval and group count). */
  private answer(commands: StoreCommand[]): HeartbeatResponse {
    return create(HeartbeatResponseSchema, {
      term: this.node.leadTerm,
      commands,
      heartbeatIntervalMs: this.cfg.heartbeatIntervalMs,
      placementGroupCount: this.node.state.placement.groupCount,
    });
  }

  private nextCommandId(): bigint {
    this.commandSeq++;
    return (this.node.leadTerm << 32n) | (this.commandSeq & 0xffffffffn);
  }

  /** DeleteBlobs commands for tombstones not sent yet (or sent long ago without an answer). */
  private commandsFor(l: LiveStore, resendStale: boolean): StoreCommand[] {
    const pending = this.node.state.tombstones.get(l.storeId);
    if (!pending || pending.size === 0) return [];
    const now = performance.now();
    const resendAfter = Math.max(3 * this.cfg.heartbeatIntervalMs, 2000);
    const covered = new Set<string>();
    for (const [id, cmd] of l.inflight) {
      if (resendStale && now - cmd.sentAt > resendAfter) {
        l.inflight.delete(id);
        continue;
      }
      for (const b of cmd.blobIds) covered.add(b);
    }
    const todo = [...pending].filter((b) => !covered.has(b) && !this.confirming.has(`${l.storeId}\0${b}`));
    const out: StoreCommand[] = [];
    for (let i = 0; i < todo.length; i += DELETE_BATCH) {
      const blobIds = todo.slice(i, i + DELETE_BATCH);
      const commandId = this.nextCommandId();
      l.inflight.set(commandId, { blobIds, sentAt: now });
      out.push(
        create(StoreCommandSchema, {
          commandId,
          term: this.node.leadTerm,
          command: { case: 'deleteBlobs', value: { blobIds } },
        }),
      );
    }
    return out;
  }
}

function abs(n: bigint): bigint {
  return n < 0n ? -n : n;
}

/** The worse of two healths (DOWN > DEGRADED > HEALTHY; unknown counts as DOWN). */
function worse(a: StoreHealth, b: StoreHealth): StoreHealth {
  const rank = (h: StoreHealth) =>
    h === StoreHealth.HEALTHY ? 0 : h === StoreHealth.DEGRADED ? 1 : h === StoreHealth.DOWN ? 2 : 3;
  const r = Math.max(rank(a), rank(b));
  return r === 0 ? StoreHealth.HEALTHY : r === 1 ? StoreHealth.DEGRADED : StoreHealth.DOWN;
}
