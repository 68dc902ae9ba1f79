import type { LogEntry } from '../../gen/haystack/v1/metadata_pb.js';
import type { LeaseKeeper } from '../lease/lease-keeper.js';
import type { Clock } from '../lease/lease-store.js';
import type { Logger } from '../server/logger.js';
import type { DirectoryConfig } from './config.js';
import type { LogStore } from './log-store.js';
import { type DirectoryClientStub, PeerClients } from './peers.js';
import type { MetadataState } from './state-machine.js';

export type Role = 'leader' | 'follower' | 'candidate';

/** A directory instance as a peer knows it. */
export interface LeaderInfo {
  id: string;
  address: string;
  term: bigint;
}

export interface NodeHooks {
  /** This instance's leadership is ready to serve writes (LeaderChanged committed). */
  onLeaderReady?(term: bigint): void;
  /** This instance stopped leading. */
  onLeaderStop?(reason: string): void;
  /** A committed entry was applied. */
  onApplied?(entry: LogEntry): void;
  /** A change committed on the leader (for metrics): seconds from append to commit. */
  onCommitted?(seconds: number): void;
}

/**
 * The state one directory instance's replication parts share (leadership,
 * leader-commit, follower, peer-server, snapshots): held once here and passed
 * to each part, so no part keeps its own copy of the role, term or indexes.
 */
export class NodeContext {
  role: Role = 'follower';
  /** Term this instance leads in (when leader/candidate). */
  leadTerm = 0n;
  leaderReady = false;
  /** Highest index known committed. */
  commitIndex = 0n;
  /** Monotonic time (ms) this instance's current leadership became ready. */
  leaderSinceMono = 0;
  /**
   * Whether the log held entries of earlier terms when this leader took office:
   * then an earlier leader may have handed out allocations whose in-memory
   * pending records died with it.
   */
  inheritedLog = false;
  /** Why writes are refused right now (for messages). */
  notLeadingReason = 'no leader elected yet';
  /** The leader as this instance knows it (null while it leads or knows none). */
  leaderInfo: LeaderInfo | null = null;
  /**
   * Monotonic time (ms) before which this instance does not try to take the lease:
   * set when it gave the lease up for want of a majority (it would win Redis's race
   * again and again without being able to commit).
   */
  acquireAfterMono = 0;
  /** Bumped on every role change; async flows started under an older epoch give up. */
  epoch = 0;
  /** Directory ids of peers as learned from their answers (address → id). */
  readonly peerIds = new Map<string, string>();
  /** Followers' positions for status: id → { durable, at }. */
  readonly followerSeen = new Map<string, { durable: bigint; atMono: number }>();
  /** Aborted by DirectoryNode.stop(). */
  readonly stopped = new AbortController();
  /** Addresses of the other instances. */
  readonly peers: string[];
  /** Instances (counting this one) that make a majority. */
  readonly majority: number;
  private readonly clients = new PeerClients();
  /** Woken when entries are appended, the commit advances or the role changes. */
  private readonly changeWaiters = new Set<() => void>();

  constructor(
    readonly cfg: DirectoryConfig,
    readonly log: Logger,
    readonly store: LogStore,
    /** The applied state; replaced when a snapshot from the leader is installed. */
    public state: MetadataState,
    readonly keeper: LeaseKeeper,
    /** Settable: a single instance listening on port 0 learns its port after start. */
    public selfAddress: string,
    readonly hooks: NodeHooks,
    readonly clock: Clock,
  ) {
    const all = cfg.peers.length > 0 ? [...cfg.peers] : [selfAddress];
    if (!all.includes(selfAddress)) all.push(selfAddress);
    this.peers = all.filter((p) => p !== selfAddress);
    this.majority = Math.floor(all.length / 2) + 1;
  }

  get id(): string {
    return this.cfg.directoryId;
  }

  /** The leader as known here: this instance when it leads. */
  leader(): LeaderInfo | null {
    if (this.role === 'leader') return { id: this.id, address: this.selfAddress, term: this.leadTerm };
    return this.leaderInfo;
  }

  /** Highest term known (promised in the term file, or seen by the lease keeper). */
  currentTerm(): bigint {
    return maxBig(this.keeper.knownTerm, this.store.currentTerm);
  }

  /** Why no leader serves writes, for error messages. */
  describeNoLeader(): string {
    if (this.keeper.lastError) return `lease store unreachable: ${this.keeper.lastError}`;
    return this.notLeadingReason;
  }

  client(address: string): DirectoryClientStub {
    return this.clients.get(address);
  }

  /** Resolves on the next wakeAll(), when `signal` aborts, or after `timeoutMs`. */
  waitChange(signal: AbortSignal, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.changeWaiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, timeoutMs);
      this.changeWaiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  wakeAll(): void {
    const ws = [...this.changeWaiters];
    this.changeWaiters.clear();
    for (const w of ws) w();
  }
}

export function minBig(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

export function maxBig(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}
