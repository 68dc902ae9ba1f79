import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import type { VolumeStats } from '../../gen/haystack/v1/common_pb.js';
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type StoreCommand,
} from '../../gen/haystack/v1/directory_pb.js';
import { StallWatch } from '../rpc/stall-watch.js';
import type { TransportSecurity } from '../security/tls-config.js';
import type { Logger } from '../server/logger.js';
import { leaderHintOf, PeerClients } from './peers.js';

/** What a store reports on each heartbeat. */
export interface StoreHeartbeatState {
  capacityBytes: bigint;
  freeBytes: bigint;
  volumes: VolumeStats[];
  /** Erasure-coded shards held (absent: a store without a shard engine). */
  shards?: { count: bigint; bytes: bigint; bytesByIndex: bigint[] };
  /**
   * Live needle bytes per placement group, numbered among `groupCount` (absent
   * until the store tracks them: see `onGroupCount`).
   */
  placementBytes?: { groupCount: number; groups: { group: number; bytes: bigint }[] };
  writable: boolean;
}

export interface StoreHeartbeatOptions {
  storeId: string;
  /** host:port where the store serves StoreService. */
  address: string;
  zone: string;
  /** Directory instances (host:port); the stream goes to the leader. */
  directories: string[];
  intervalMs: number;
  state(): Promise<StoreHeartbeatState>;
  /** Carries out a command from the directory (delete blobs, compact a volume). */
  onCommand(cmd: StoreCommand): Promise<void>;
  /**
   * The cluster's placement group count, from a heartbeat answer, whenever it
   * differs from the last one given (answers without one are skipped: the count
   * is fixed once set); the next heartbeat goes at once, so the directory gets
   * the bytes per group without waiting an interval.
   */
  onGroupCount?(groupCount: number): void;
  /**
   * No answer for this long (ms) drops the stream and opens another (default: 15 s or
   * five intervals, whichever is longer).
   */
  answerTimeoutMs?: number;
  /** The term of every answer from the leader (a directory that proved its role over mTLS). */
  onTerm?(term: bigint): void;
  log: Logger;
  /** The store's certificate (default: this process's own, see rpc/transport.ts). */
  security?: TransportSecurity;
}

export interface StoreHeartbeat {
  stop(): Promise<void>;
}

/** Commands remembered as done (so a resent command is acknowledged, not run twice). */
const DONE_MEMORY = 10_000;

/**
 * Keeps a store's Heartbeat stream to the directory leader open: sends the
 * store's state every interval (the directory may change the interval), carries
 * out the commands that come back and reports them done on the next heartbeat
 * (sent at once after a command completes). A follower answers with the leader's
 * address (FAILED_PRECONDITION) and the stream moves there; any other failure
 * tries the next directory with exponential backoff. Commands from a term lower
 * than the highest seen are refused (a deposed leader's).
 */
export function startStoreHeartbeat(opts: StoreHeartbeatOptions): StoreHeartbeat {
  const stop = new AbortController();
  const clients = new PeerClients(opts.security);
  const log = opts.log;
  let highestTerm = 0n;
  let interval = opts.intervalMs;
  const completed: bigint[] = [];
  const done = new Set<bigint>();
  let hint: string | null = null;
  let rr = 0;
  let groupCount = 0;

  const remember = (id: bigint) => {
    done.add(id);
    if (done.size > DONE_MEMORY) done.delete(done.values().next().value as bigint);
  };

  async function runStream(target: string): Promise<void> {
    const streamCtl = new AbortController();
    // The leader answers every heartbeat: no answer for answerTimeoutMs (beyond
    // STORE_DOWN_AFTER's defaults, so a slow leader is not cut off before it would
    // count this store DOWN anyway) means the stream is stuck below HTTP/2: drop it.
    const stall = new StallWatch(
      () => opts.answerTimeoutMs ?? Math.max(15_000, 5 * interval),
      AbortSignal.any([stop.signal, streamCtl.signal]),
    );
    const signal = stall.signal;
    let wake: (() => void) | null = null;
    const sendNow = () => wake?.();
    async function* requests(): AsyncGenerator<HeartbeatRequest> {
      while (!signal.aborted) {
        // Collecting the state (a shard recount may page through volumes) is not the directory's silence.
        stall.hold();
        const st = await opts.state();
        stall.release();
        const ids = completed.splice(0, completed.length);
        yield create(HeartbeatRequestSchema, {
          storeId: opts.storeId,
          address: opts.address,
          zone: opts.zone,
          capacityBytes: st.capacityBytes,
          freeBytes: st.freeBytes,
          volumes: st.volumes,
          shards: st.shards,
          ...(st.placementBytes ? { placementBytes: st.placementBytes } : {}),
          writable: st.writable,
          completedCommandIds: ids,
        });
        await new Promise<void>((resolve) => {
          const finish = () => {
            clearTimeout(t);
            signal.removeEventListener('abort', finish);
            resolve();
          };
          const t = setTimeout(finish, interval);
          wake = finish;
          signal.addEventListener('abort', finish, { once: true });
        });
        wake = null;
      }
    }
    const commands: StoreCommand[] = [];
    let running = false;
    const runCommands = async () => {
      if (running) return;
      running = true;
      try {
        while (commands.length > 0 && !signal.aborted) {
          const cmd = commands.shift() as StoreCommand;
          if (done.has(cmd.commandId)) {
            completed.push(cmd.commandId);
            sendNow();
            continue;
          }
          try {
            await opts.onCommand(cmd);
            remember(cmd.commandId);
            completed.push(cmd.commandId);
            sendNow();
          } catch (err) {
            log.warn({ commandId: cmd.commandId, err }, 'directory command failed: it will be sent again');
          }
        }
      } finally {
        running = false;
      }
    };
    try {
      const stream = clients.get(target).heartbeat(requests(), { signal });
      let first = true;
      for await (const resp of stream) {
        stall.heard();
        if (first) {
          log.info({ directory: target, term: resp.term }, 'heartbeat stream to the directory leader open');
          first = false;
          rr = 0;
        }
        if (resp.term < highestTerm) {
          log.warn({ term: resp.term, highestTerm }, 'heartbeat answer from a deposed leader: reconnecting');
          streamCtl.abort();
          break;
        }
        highestTerm = resp.term;
        opts.onTerm?.(resp.term);
        if (resp.heartbeatIntervalMs > 0) interval = resp.heartbeatIntervalMs;
        if (resp.placementGroupCount !== 0 && resp.placementGroupCount !== groupCount && opts.onGroupCount) {
          groupCount = resp.placementGroupCount;
          opts.onGroupCount(groupCount);
          sendNow();
        }
        for (const cmd of resp.commands) {
          if (cmd.term < highestTerm) {
            log.warn(
              { commandId: cmd.commandId, term: cmd.term, highestTerm },
              'refusing a command of an old term',
            );
            continue;
          }
          commands.push(cmd);
        }
        void runCommands();
      }
    } catch (err) {
      if (stall.stalled && !stop.signal.aborted) {
        log.warn(
          { directory: target, err: String(stall.signal.reason) },
          'heartbeat stream stuck: reconnecting',
        );
        throw new ConnectError(`no heartbeat answer from ${target} in time`, Code.Unavailable);
      }
      throw err;
    } finally {
      stall.stop();
      streamCtl.abort();
    }
  }

  const loop = (async () => {
    let backoff = 50;
    while (!stop.signal.aborted) {
      const dirs = opts.directories;
      if (dirs.length === 0) return;
      const target: string = hint ?? (dirs[rr++ % dirs.length] as string);
      hint = null;
      try {
        await runStream(target);
        backoff = 50;
      } catch (err) {
        if (stop.signal.aborted) break;
        const ce = ConnectError.from(err);
        const leader = leaderHintOf(ce);
        if (leader && leader !== target) {
          hint = leader;
          log.debug({ directory: target, leader }, 'directory is not the leader: following its hint');
          continue;
        }
        log.debug({ directory: target, code: Code[ce.code], err: ce.rawMessage }, 'heartbeat stream failed');
      }
      if (stop.signal.aborted) break;
      const wait = backoff / 2 + Math.random() * backoff;
      backoff = Math.min(backoff * 2, 2000);
      await new Promise((r) => setTimeout(r, wait));
    }
  })();

  return {
    stop: async () => {
      stop.abort();
      await loop;
    },
  };
}
