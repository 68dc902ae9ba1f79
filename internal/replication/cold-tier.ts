import { Code, ConnectError } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { STUB_CONTENT_TYPE } from '../common/shard-key.js';
import { type EcParams, type EncodedBlob, encodeBlob, type ShardLayout, verifyShard } from '../ec/codec.js';
import { coolBlob, warmBlob } from '../ec/cooling.js';
import { layoutFromWire } from '../ec/layout-wire.js';
import { chooseCode } from '../ec/params.js';
import { getShard, putShard, readStripe, type StoreClient } from '../ec/shard-client.js';
import { decideTier } from '../ec/tier-policy.js';
import type { StoreAt } from '../rpc/clients.js';
import { deadlineSignal } from '../rpc/deadline.js';
import { chooseTargets } from './placement.js';
import type { PlacementEnv } from './placement-env.js';
import { drainShards } from './shard-drain.js';
import { ShardGc } from './shard-gc.js';

/** Hooks for metrics: one finished tier move. */
export interface ColdTierEvents {
  onTierMove?(kind: 'encode' | 'rematerialise', outcome: 'done' | 'failed', bytes: number, ms: number): void;
  /** A shard rebuilt onto `storeId`: for a store swapped in ('rebuilt') or found missing or corrupt ('corrupt'). */
  onShardRepair?(storeId: string, stripeId: string, reason: 'rebuilt' | 'corrupt' | 'drained'): void;
  /** An orphan shard (referenced by no committed stripe) deleted from `storeId`. */
  onShardCollected?(storeId: string, stripeId: string, index: number): void;
}

/** How many blobs recently checked for warming are remembered (so a hot blob is not Stat'ed on every report). */
const MAX_CHECKED = 100_000;
/** A replicated blob above the warm line is looked at again after this long. */
const RECHECK_MS = 60_000;
const LIST_PAGE = 1000;
/** A store whose scrub read failed other than NOT_FOUND or DATA_LOSS is not scrubbed again for this long. */
const SCRUB_SKIP_MS = 60_000;

/**
 * The replication manager's cold tier (docs/design/ec-tier.md, "Moving between
 * tiers"), placement mode only, EC_ENABLED only:
 *
 * - sweep (EC_SWEEP_INTERVAL): looks through the placement groups, each from one
 *   ACTIVE member's listing, and encodes the blobs tier-policy.ts calls cold
 *   (below EC_COLD_RATE for EC_COLD_AFTER, never a raised one) with coolBlob —
 *   every shard durable on the group's ec_members, then the stubs (the commit
 *   point), so the blob always has its full replicas or k + m shards and stubs.
 *   A group's EC members are chosen once, before its first stripe (k + m distinct
 *   HEALTHY stores, zones spread), and committed with UpdatePlacement (compare-
 *   and-set on the group's epoch). A group is skipped while any member or EC
 *   member is not HEALTHY and ACTIVE: no stripe starts short of a shard.
 * - warm (onHeat): a reported blob whose rate reaches EC_WARM_RATE is Stat'ed on
 *   a member; a stub there is warmed with warmBlob — full needles on every member
 *   stamped above the stub, only then the shards deleted.
 *
 * - repair (MONITORING_INTERVAL; SCRUB_INTERVAL with scrub): rebuilds joining
 *   EC members' shards, moves EC members off draining stores (shard-drain.ts),
 *   and with scrub rebuilds missing or corrupt shards;
 * - orphan shards (GC_INTERVAL): collected after GC_GRACE_PERIOD (shard-gc.ts).
 *
 * The cooling clock is this instance's: a blob must have been below the line for
 * EC_COLD_AFTER since this instance took the lease and since it last saw the
 * blob above it, so a takeover only delays encoding. One move at a time.
 */
export class ColdTier {
  /** When this instance became active (the cooling clock starts no earlier). */
  private activeSince = 0;
  /** blob → last time this instance saw its rate at or above EC_COLD_RATE. */
  private readonly warmSeen = new Map<string, number>();
  /** blob → when it was last checked for warming (bounded). */
  private readonly checked = new Map<string, number>();
  private readonly warmQueue = new Set<string>();
  private nextGroup = 0;
  private busy = false;
  private codeProblem = '';
  /** store → until when the scrub leaves it alone (its last scrub read hung or failed). */
  private readonly scrubSkip = new Map<string, number>();
  private readonly gc = new ShardGc(this);
  /** "group/store" pairs already warned about having no drain target (logged once). */
  readonly drainStalled = new Set<string>();

  constructor(
    readonly env: PlacementEnv,
    private readonly stores: (store: StoreAt) => StoreClient,
    readonly events: ColdTierEvents = {},
  ) {}

  private get cfg() {
    return this.env.cfg.ec;
  }

  get enabled(): boolean {
    return this.cfg.enabled && this.env.mirror.placement.enabled;
  }

  /** Called when this instance takes the lease. */
  activate(now: number): void {
    this.activeSince = now;
    this.warmSeen.clear();
    this.checked.clear();
    this.warmQueue.clear();
  }

  /** The code for this cluster's store count, or undefined (logged once) when it has none. */
  code(): EcParams | undefined {
    const r = chooseCode(this.env.mirror.stores.size, this.cfg);
    if ('code' in r) {
      this.codeProblem = '';
      return r.code;
    }
    if (r.reason !== this.codeProblem)
      this.env.log.warn({ reason: r.reason }, 'cold tier: no code, nothing cools');
    this.codeProblem = r.reason;
    return undefined;
  }

  /** Heat reported for these blobs: remember the warm ones, queue cold-tier checks for the hot ones. */
  onHeat(ids: Iterable<string>, now: number): void {
    if (!this.enabled) return;
    for (const id of ids) {
      const rate = this.env.heat.rate(id, now);
      if (rate >= this.cfg.coldRatePerMin) this.warmSeen.set(id, now);
      if (rate < this.cfg.warmRatePerMin) continue;
      const at = this.checked.get(id);
      if (at !== undefined && now - at < RECHECK_MS) continue;
      this.checked.delete(id);
      this.checked.set(id, now);
      if (this.checked.size > MAX_CHECKED) this.checked.delete(this.checked.keys().next().value as string);
      this.warmQueue.add(id);
    }
    if (this.warmSeen.size > MAX_CHECKED) {
      for (const [id, at] of this.warmSeen) if (now - at > this.cfg.coldAfterMs) this.warmSeen.delete(id);
    }
    if (this.warmQueue.size > 0) void this.run(() => this.drainWarm());
  }

  /** One orphan shard collection pass (shard-gc.ts), in this lane; shards deleted. */
  async collectOrphans(): Promise<number> {
    if (!this.enabled || !this.env.acting()) return 0;
    return (await this.run(() => this.gc.pass())) ?? 0;
  }

  /** One sweep: groups in turn until EC_MOVES_PER_SWEEP blobs cooled or every group looked at. */
  async sweep(): Promise<number> {
    if (!this.enabled || !this.env.acting()) return 0;
    return (await this.run(() => this.sweepGroups())) ?? 0;
  }

  /** Runs one pass at a time (sweeps and warm drains share the lane). */
  private async run<T>(fn: () => Promise<T>): Promise<T | undefined> {
    if (this.busy) return undefined;
    this.busy = true;
    try {
      return await fn();
    } finally {
      this.busy = false;
      if (this.warmQueue.size > 0 && this.env.acting())
        setImmediate(() => void this.run(() => this.drainWarm()));
    }
  }

  private async sweepGroups(): Promise<number> {
    const code = this.code();
    if (!code) return 0;
    const p = this.env.mirror.placement;
    let moved = 0;
    for (let n = 0; n < p.groupCount && moved < this.cfg.movesPerSweep; n++) {
      if (!this.env.acting()) break;
      const g = p.groups[this.nextGroup];
      this.nextGroup = (this.nextGroup + 1) % p.groupCount;
      if (!g) continue;
      try {
        moved += await this.sweepGroup(g, code, this.cfg.movesPerSweep - moved);
      } catch (err) {
        this.env.log.warn(
          { group: g.group, err: ConnectError.from(err).message },
          'cold tier: group sweep failed',
        );
      }
      if (this.warmQueue.size > 0) await this.drainWarm();
    }
    return moved;
  }

  /** True when the mirror has the store HEALTHY. */
  healthy(storeId: string): boolean {
    return this.env.mirror.stores.get(storeId)?.health === StoreHealth.HEALTHY;
  }

  /** The store's client (throws when its address is unknown). */
  client(storeId: string): StoreClient {
    const address = this.env.mirror.stores.get(storeId)?.address;
    if (!address) throw new Error(`store ${storeId} has no known address`);
    return this.stores({ storeId, address });
  }

  /**
   * The group's EC members for `code`, choosing and committing them first when it
   * has none; undefined when they cannot serve a new stripe now.
   */
  private async ecMembersOf(g: PlacementGroup, code: EcParams): Promise<string[] | undefined> {
    const n = code.k + code.m;
    let ec = g.ecMembers;
    if (ec.length === 0) {
      const now = this.env.now();
      const picked = chooseTargets([], 0n, n, this.env.ctx(now));
      if (picked.length < n) return undefined;
      this.env.ensureActing();
      const res = await this.env.directory.updatePlacement({
        group: g.group,
        expectedEpoch: g.epoch,
        members: g.members,
        ecMembers: picked.map((s) => ({ storeId: s.storeId, state: PlacementMemberState.ACTIVE })),
        ecDataShards: code.k,
      });
      ec = res.group?.ecMembers ?? [];
      this.env.log.info(
        { group: g.group, ecMembers: ec.map((m) => m.storeId) },
        'cold tier: EC members chosen',
      );
    }
    if (ec.length !== n) {
      this.env.log.warn(
        { group: g.group, ecMembers: ec.length, code: `RS(${code.k},${code.m})` },
        'cold tier: the group’s EC members do not match the code; its blobs stay replicated',
      );
      return undefined;
    }
    if (!ec.every((m) => m.state === PlacementMemberState.ACTIVE && this.healthy(m.storeId)))
      return undefined;
    // No new stripe with a shard on a draining store (shard-drain.ts is moving them off).
    if (ec.some((m) => this.env.mirror.stores.get(m.storeId)?.draining)) return undefined;
    return ec.map((m) => m.storeId);
  }

  private async sweepGroup(g: PlacementGroup, code: EcParams, budget: number): Promise<number> {
    const env = this.env;
    if (!g.members.every((m) => this.healthy(m.storeId))) return 0;
    const reader = g.members.find((m) => m.state === PlacementMemberState.ACTIVE);
    if (!reader) return 0;
    const candidates: string[] = [];
    const now = env.now();
    let token = '';
    do {
      const page = await this.client(reader.storeId).listPlacementGroup(
        {
          groupCount: env.mirror.placement.groupCount,
          group: g.group,
          pageSize: LIST_PAGE,
          pageToken: token,
        },
        { signal: this.deadline() },
      );
      for (const n of page.needles) {
        if (n.deleted || n.contentType === STUB_CONTENT_TYPE) continue;
        const rec = env.mirror.placement.extras.get(n.blobId);
        const d = decideTier(
          {
            tier: 'replicated',
            ratePerMin: env.heat.rate(n.blobId, now),
            raised:
              rec !== undefined && (rec.replicas.length > 0 || rec.targetReplicaCount > g.members.length),
            writtenAtMs: Number(n.writtenAtMs),
            coolSinceMs: Math.max(this.activeSince, this.warmSeen.get(n.blobId) ?? 0),
            nowMs: now,
          },
          this.cfg,
        );
        if (d.action === 'encode') candidates.push(n.blobId);
      }
      token = page.nextPageToken;
    } while (token && candidates.length < budget);
    if (candidates.length === 0) return 0;
    const ec = await this.ecMembersOf(g, code);
    if (!ec) return 0;
    let moved = 0;
    for (const blobId of candidates.slice(0, budget)) {
      if (!env.acting()) break;
      if (await this.cool(blobId, g, ec, code)) moved++;
    }
    return moved;
  }

  private async cool(blobId: string, g: PlacementGroup, ec: string[], code: EcParams): Promise<boolean> {
    const env = this.env;
    const started = performance.now();
    try {
      env.ensureActing();
      const cooled = await coolBlob(blobId, code, {
        members: g.members.map((m) => this.client(m.storeId)),
        ecStores: ec.map((id) => this.client(id)),
        term: env.term(),
        signal: this.deadline(),
      });
      this.events.onTierMove?.('encode', 'done', cooled.layout.size, performance.now() - started);
      env.log.info({ blobId, group: g.group, code: `RS(${code.k},${code.m})` }, 'cold tier: blob encoded');
      return true;
    } catch (err) {
      this.events.onTierMove?.('encode', 'failed', 0, performance.now() - started);
      env.log.warn(
        { blobId, err: (err as Error).message },
        'cold tier: encoding failed; the blob stays replicated',
      );
      return false;
    }
  }

  /**
   * A scrub read ends at SCRUB_READ_TIMEOUT (at most COPY_TIMEOUT) or when the lease
   * is lost: a scrub only verifies, so a store that hangs must not hold the lane
   * (and every encode and warm queued behind it) for a copy's deadline per stripe.
   */
  private scrubDeadline(): AbortSignal {
    const ms = Math.min(this.env.cfg.scrubReadTimeoutMs, this.env.cfg.copyTimeoutMs);
    return deadlineSignal(ms, this.env.signal(), 'a scrub read');
  }

  private scrubSkipped(storeId: string): boolean {
    const until = this.scrubSkip.get(storeId);
    if (until === undefined) return false;
    if (this.env.now() < until) return true;
    this.scrubSkip.delete(storeId);
    return false;
  }

  /** One move's calls end at COPY_TIMEOUT or when the lease is lost: a stalled store never holds the lane. */
  deadline(): AbortSignal {
    return deadlineSignal(this.env.cfg.copyTimeoutMs, this.env.signal(), 'a cold-tier move (COPY_TIMEOUT)');
  }

  /**
   * Shard repair (docs/design/ec-tier.md, "Repair"), one group at a time:
   * - every group with a JOINING EC member (the directory swapped in a store for a
   *   lost one): each stripe's shard for that index is rebuilt from k others and
   *   written there; once all are, the member is marked ACTIVE (compare-and-set);
   * - with `scrub`, every shard of every stripe is read back (the store checks its
   *   needle CRC32C, this checks the layout's) and a missing or corrupt one is
   *   rebuilt in place (WriteShard replace).
   * Returns the shards rebuilt.
   */
  async repair(scrub: boolean): Promise<number> {
    if (!this.enabled || !this.env.acting()) return 0;
    return (
      (await this.run(async () => {
        let rebuilt = 0;
        for (const g of this.env.mirror.placement.groups) {
          if (!g || g.ecMembers.length === 0 || !this.env.acting()) continue;
          const joining = g.ecMembers.some((m) => m.state === PlacementMemberState.JOINING);
          const draining = g.ecMembers.some((m) => this.env.mirror.stores.get(m.storeId)?.draining);
          if (!joining && !scrub && !draining) continue;
          try {
            // A joining member is rebuilt first; a draining one moves once the group is whole.
            if (draining && !joining) {
              const moved = await drainShards(this, g);
              rebuilt += moved;
              // `g` is stale once a move committed: the scrub waits for the next pass.
              if (moved > 0 || !scrub) continue;
            }
            rebuilt += await this.repairGroup(g, scrub);
          } catch (err) {
            this.env.log.warn(
              { group: g.group, err: ConnectError.from(err).message },
              'cold tier: shard repair failed',
            );
          }
        }
        return rebuilt;
      })) ?? 0
    );
  }

  /** The stubs of a group (cold blob ids), from one ACTIVE HEALTHY member's listing. */
  async stubsOf(g: PlacementGroup): Promise<{ reader: string; ids: string[] } | undefined> {
    const reader = g.members.find((m) => m.state === PlacementMemberState.ACTIVE && this.healthy(m.storeId));
    if (!reader) return undefined;
    const ids: string[] = [];
    let token = '';
    do {
      const page = await this.client(reader.storeId).listPlacementGroup(
        {
          groupCount: this.env.mirror.placement.groupCount,
          group: g.group,
          pageSize: LIST_PAGE,
          pageToken: token,
        },
        { signal: this.deadline() },
      );
      for (const n of page.needles) if (!n.deleted && n.contentType === STUB_CONTENT_TYPE) ids.push(n.blobId);
      token = page.nextPageToken;
    } while (token);
    return { reader: reader.storeId, ids };
  }

  private async repairGroup(g: PlacementGroup, scrub: boolean): Promise<number> {
    const env = this.env;
    const ec = g.ecMembers;
    const joining = new Set(ec.flatMap((m, i) => (m.state === PlacementMemberState.JOINING ? [i] : [])));
    // A joining store must be up to take its shards.
    for (const i of joining) if (!this.healthy(ec[i]!.storeId)) return 0;
    const stubs = await this.stubsOf(g);
    if (!stubs) return 0;
    let rebuilt = 0;
    let failed = 0;
    for (const blobId of stubs.ids) {
      if (!env.acting()) return rebuilt;
      try {
        rebuilt += await this.repairStripe(stubs.reader, blobId, g, joining, scrub);
      } catch (err) {
        failed++;
        env.log.warn(
          { blobId, group: g.group, err: (err as Error).message },
          'cold tier: stripe repair failed',
        );
      }
    }
    if (joining.size > 0 && failed === 0) {
      env.ensureActing();
      await env.directory.updatePlacement({
        group: g.group,
        expectedEpoch: g.epoch,
        members: g.members,
        ecMembers: ec.map((m) => ({ storeId: m.storeId, state: PlacementMemberState.ACTIVE })),
        ecDataShards: g.ecDataShards,
      });
      env.log.info(
        { group: g.group, stores: [...joining].map((i) => ec[i]!.storeId), stripes: stubs.ids.length },
        'cold tier: rebuilt EC member(s) ACTIVE',
      );
    }
    return rebuilt;
  }

  /** Rebuilds the shards of one blob's stripe that are on a joining store, or (scrub) missing or corrupt. */
  private async repairStripe(
    reader: string,
    blobId: string,
    g: PlacementGroup,
    joining: ReadonlySet<number>,
    scrub: boolean,
  ): Promise<number> {
    const layout = await this.stripeLayout(reader, blobId);
    if (!layout) return 0;
    const ref = { stripeId: blobId };
    const ec = g.ecMembers;
    if (layout.k + layout.m !== ec.length)
      throw new Error(`RS(${layout.k},${layout.m}) does not fit ${ec.length} EC members`);
    const bad = new Set(joining);
    if (scrub) {
      for (const [i, m] of ec.entries()) {
        if (bad.has(i) || !this.healthy(m.storeId) || this.scrubSkipped(m.storeId)) continue;
        try {
          const bytes = await getShard(this.client(m.storeId), ref.stripeId, i, {
            signal: this.scrubDeadline(),
          });
          if (!verifyShard(layout, i, bytes)) bad.add(i);
        } catch (err) {
          const e = ConnectError.from(err);
          if (e.code === Code.NotFound || e.code === Code.DataLoss) bad.add(i);
          else if (this.env.acting()) {
            // Unknown, not bad: nothing is rebuilt onto it, and it is left alone for a while.
            this.scrubSkip.set(m.storeId, this.env.now() + SCRUB_SKIP_MS);
            this.env.log.warn(
              { storeId: m.storeId, stripeId: ref.stripeId, err: e.message },
              'cold tier: scrub read failed; the store is skipped by the scrub for a while',
            );
          }
        }
      }
    }
    if (bad.size === 0) return 0;
    const enc = await this.rebuild(ref.stripeId, layout, g, bad);
    let n = 0;
    for (const i of bad) {
      this.env.ensureActing();
      await putShard(this.client(ec[i]!.storeId), ref.stripeId, i, enc.shards[i]!, layout.crc32c[i]!, {
        term: this.env.term(),
        replace: true,
        signal: this.deadline(),
      });
      this.events.onShardRepair?.(ec[i]!.storeId, ref.stripeId, joining.has(i) ? 'rebuilt' : 'corrupt');
      n++;
    }
    this.env.log.info({ blobId, shards: [...bad] }, 'cold tier: shards rebuilt');
    return n;
  }

  /**
   * The layout of `blobId`'s one-blob stripe from the stub on `reader`; undefined
   * when the blob has no stub there (warmed or deleted meanwhile) or is not a
   * one-blob stripe. Throws for a layout it cannot read.
   */
  async stripeLayout(reader: string, blobId: string): Promise<ShardLayout | undefined> {
    const ref = (await this.client(reader).stat({ blobId }, { signal: this.deadline() })).needle?.cold;
    if (!ref || ref.stripeId !== blobId) return undefined;
    const layout = layoutFromWire(ref.layout);
    if (typeof layout === 'string') throw new Error(layout);
    return layout;
  }

  /**
   * Every shard of a stripe, rebuilt from k intact others (not those in `bad`,
   * nor on stores not HEALTHY): the encoding is deterministic, so re-encoding the
   * stripe gives each shard exactly as first written; the shards in `bad` are
   * checked against the layout's CRC32C.
   */
  async rebuild(
    stripeId: string,
    layout: ShardLayout,
    g: PlacementGroup,
    bad: ReadonlySet<number>,
  ): Promise<EncodedBlob> {
    const sources = g.ecMembers.map((m, i) =>
      bad.has(i) || !this.healthy(m.storeId) ? undefined : this.client(m.storeId),
    );
    const read = await readStripe(stripeId, layout, sources, { signal: this.deadline() });
    const enc = await encodeBlob(read.data, layout);
    for (const i of bad) {
      if (enc.layout.crc32c[i] !== layout.crc32c[i])
        throw new Error(`rebuilt shard ${i} of stripe ${stripeId} does not match its CRC32C`);
    }
    return enc;
  }

  private async drainWarm(): Promise<void> {
    for (const blobId of [...this.warmQueue]) {
      this.warmQueue.delete(blobId);
      if (!this.env.acting()) return;
      await this.warm(blobId);
    }
  }

  /** Warms `blobId` when a member holds its stub; nothing for a replicated blob. */
  private async warm(blobId: string): Promise<void> {
    const env = this.env;
    const g = env.mirror.placement.groupFor(blobId);
    if (!g || g.ecMembers.length === 0) return;
    const reader = g.members.find((m) => m.state === PlacementMemberState.ACTIVE && this.healthy(m.storeId));
    if (!reader) return;
    const started = performance.now();
    try {
      const facts = (await this.client(reader.storeId).stat({ blobId }, { signal: this.deadline() })).needle;
      if (!facts?.cold) return;
      env.ensureActing();
      await warmBlob(blobId, {
        members: g.members.map((m) => this.client(m.storeId)),
        ecStores: g.ecMembers.map((m) => this.client(m.storeId)),
        term: env.term(),
        signal: this.deadline(),
      });
      this.warmSeen.set(blobId, env.now());
      this.events.onTierMove?.('rematerialise', 'done', Number(facts.size), performance.now() - started);
      env.log.info({ blobId, group: g.group }, 'cold tier: blob re-materialised (full replicas)');
    } catch (err) {
      this.events.onTierMove?.('rematerialise', 'failed', 0, performance.now() - started);
      // Checked again after RECHECK_MS if it stays hot.
      env.log.warn(
        { blobId, err: (err as Error).message },
        'cold tier: re-materialisation failed; the blob stays cold',
      );
    }
  }
}
