import { setMaxListeners } from 'node:events';
import { create } from '@bufbuild/protobuf';
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type HandlerContext,
  type ServiceImpl,
} from '@connectrpc/connect';
import { type StoreTarget, type VolumeStats, VolumeStatsSchema } from '../../gen/haystack/v1/common_pb.js';
import {
  type NeedleFacts,
  NeedleFactsSchema,
  type ReadResponse,
  ReadResponseSchema,
  StoreService,
  type WriteHeader,
  WriteHeaderSchema,
  type WriteRequest,
  WriteRequestSchema,
  type WriteResponse,
  WriteResponseSchema,
  type WrittenReplica,
  WrittenReplicaSchema,
} from '../../gen/haystack/v1/store_pb.js';
import { validateBlobId } from '../common/blob-id.js';
import { checkGroupCount } from '../common/placement.js';
import type { ClientPool } from '../rpc/clients.js';
import { FENCED_TERM_HEADER, invalidArgument, mapErrors, toConnectError } from '../rpc/errors.js';
import { keyPage } from '../rpc/key-page.js';
import { AsyncPipe } from '../rpc/pipe.js';
import { callerIdentity, isAuthenticatedTransport } from '../security/authz.js';
import { boundedFromPeer } from '../security/peer-checks.js';
import { DEFAULT_LISTENER_LIMITS } from '../server/listener-limits.js';
import type { Logger } from '../server/logger.js';
import { boundedChunks } from './chunk-stream.js';
import { coldFacts, isStub, STUB_CONTENT_TYPE, writeStub } from './cold-stub.js';
import type { KeyRewrapper } from './crypto/rewrap.js';
import { FailedPreconditionError, NotFoundError } from './errors.js';
import type { FencingTerms, Issuer } from './fencing-terms.js';
import { FORWARD_INLINE_MAX, FORWARD_MESSAGE_MAX, serveForwardWrites } from './forward-writes.js';
import { ForwardWritesClient, forwardIdleMs } from './forward-writes-client.js';
import { decodeGroupCursor, encodeGroupCursor } from './group-cursor.js';
import { shardHandlers } from './shard-service.js';
import type { ShardStore } from './shard-store.js';
import type { NeedleFactsInfo, NeedleWriter, Store, VolumeStatsInfo } from './store.js';
import { type GroupCursor, MAX_GROUP_PAGE } from './store-list.js';
import { pinnedStore, wrongPeer } from './store-peers.js';
import { checkMetaField } from './store-write.js';
import type { DirectoryTermWitness } from './term-witness.js';

/** Largest chunk a client may send in one Write message. */
const MAX_CHUNK = 4 * 1024 * 1024;
/** A stamp from the wire may be at most this far ahead of this store's clock (clock skew allowance). */
const MAX_STAMP_AHEAD_MS = 60 * 60 * 1000;
/** Default ListPlacementGroup page. */
const DEFAULT_GROUP_PAGE = 100;

export interface StoreServiceOptions {
  storeId: string;
  store: Store;
  peers: ClientPool;
  log: Logger;
  readChunkSize: number;
  /** Counts a served client read for the replication manager's heat map (not internal reads: isClientRead). */
  onRead?: (blobId: string) => void;
  /** A read or a scrub found this store's copy corrupt (checksum mismatch). */
  onCorrupt?: (blobId: string) => void;
  /**
   * A Read's cookie check: `skipped` (cookie 0, a caller that authorized the read otherwise),
   * `passed`, or `refused` (a cookie sent and NOT_FOUND answered: wrong cookie, deleted, unknown).
   */
  onCookieCheck?: (result: 'skipped' | 'passed' | 'refused') => void;
  /** Erasure-coded shards (WriteShard/ReadShard/DeleteShard); without it they are FAILED_PRECONDITION. */
  shards?: ShardStore;
  /** RewrapKeys (the store has KEKs); without it RewrapKeys is FAILED_PRECONDITION. */
  rewrapper?: KeyRewrapper;
  /**
   * Highest fencing terms seen, one per issuer, durable (fencing-terms.ts): directory
   * leaders (Write, Delete) and replication managers (Replicate, shards, cold stubs)
   * draw terms from different counters.
   */
  fencing: FencingTerms;
  /**
   * Directory terms as the directories state them (term-witness.ts): a relayed
   * directory term above the highest stated is acted on only once a directory
   * confirms it. Without it (a store with no directories configured) relayed
   * terms are only bounded.
   */
  witness?: DirectoryTermWitness;
  /**
   * Blobs of at most this many bytes reach forward_to replicas on a long-lived
   * ForwardWrites stream per replica (forward-writes.ts), larger ones on a Write
   * stream each; 0 sends every blob on Write streams. At most FORWARD_INLINE_MAX
   * (the default).
   */
  forwardInlineMax?: number;
  /** This store's LISTEN_REQUEST_IDLE_TIMEOUT (ms; default 60 s): its ForwardWrites streams end well before a peer's would cut them (forwardIdleMs). */
  requestIdleMs?: number;
}

/** A volume's statistics as the contract's VolumeStats message. */
export function volumeStatsMessage(v: VolumeStatsInfo): VolumeStats {
  return create(VolumeStatsSchema, {
    volumeId: v.volumeId,
    sizeBytes: BigInt(v.sizeBytes),
    liveBytes: BigInt(v.liveBytes),
    needleCount: BigInt(v.needleCount),
    deletedCount: BigInt(v.deletedCount),
    efficiency: v.efficiency,
    readOnly: v.readOnly,
    compacting: v.compacting,
  });
}

/**
 * Whether a Read is a client's (counted as the blob's access heat): not one marked
 * `internal` (a copy's source, an encode's read), nor one by the replication
 * manager or a store (their reads move blobs, they are not demand for them).
 */
function isClientRead(req: { internal: boolean }, ctx: HandlerContext): boolean {
  const role = callerIdentity(ctx)?.role;
  return !req.internal && role !== 'replication' && role !== 'store';
}

/** Whose term a Delete carries: the replication manager's own lease term, else a directory leader's. */
function issuerOf(ctx: HandlerContext): Issuer {
  return callerIdentity(ctx)?.role === 'replication' ? 'manager' : 'directory';
}

function checkId(id: string): void {
  const problem = validateBlobId(id);
  if (problem) throw invalidArgument(problem);
}

/** A stamp from the wire: 0 → undefined (stamp it here); negative or > 1 h ahead → INVALID_ARGUMENT. */
function wireStamp(field: string, v: bigint): number | undefined {
  if (v === 0n) return undefined;
  const now = Date.now();
  if (v < 0n || v > BigInt(now + MAX_STAMP_AHEAD_MS)) {
    throw invalidArgument(
      `${field} ${v} must be 0 (stamp it now) or ms since the epoch at most ${MAX_STAMP_AHEAD_MS / 60_000} minutes ahead of this store's clock (${now})`,
    );
  }
  return Number(v);
}

/** A needle's facts as the contract's NeedleFacts. */
export function factsMessage(f: NeedleFactsInfo): NeedleFacts {
  return create(NeedleFactsSchema, {
    blobId: f.blobId,
    cookie: f.cookie,
    size: BigInt(f.size),
    sha256: f.sha256 ?? new Uint8Array(),
    contentType: f.contentType,
    fileName: f.fileName,
    writtenAtMs: BigInt(f.writtenAtMs),
    deleted: f.deleted,
    crc32c: f.crc32c,
    volumeId: f.volumeId,
  });
}

/** The StoreService handlers over a Store engine. */
export class StoreServiceImpl {
  /** Small writes' replicas: one ForwardWrites stream per replica store. */
  private readonly forwards: ForwardWritesClient;
  private readonly inlineMax: number;
  /** Aborted by drain(): ForwardWrites streams served here take no more writes. */
  private readonly draining = new AbortController();

  constructor(private readonly o: StoreServiceOptions) {
    // One listener per ForwardWrites stream served, each removed when its stream ends.
    setMaxListeners(0, this.draining.signal);
    this.inlineMax = Math.min(o.forwardInlineMax ?? FORWARD_INLINE_MAX, FORWARD_INLINE_MAX);
    this.forwards = new ForwardWritesClient(
      (target, requests, signal) =>
        o.peers
          .client(StoreService, target.address, pinnedStore('forward_to entry', target))
          .forwardWrites(requests, { signal }),
      forwardIdleMs(o.requestIdleMs ?? DEFAULT_LISTENER_LIMITS.requestIdleMs),
    );
  }

  /** The store is shutting down: streams of forwarded writes here end once their writes in flight are answered. */
  drain(): void {
    this.draining.abort();
  }

  /** After the last call: ends this store's own ForwardWrites streams. */
  close(): void {
    this.forwards.close();
  }

  register(router: ConnectRouter): void {
    const impl = this.impl();
    router
      .service(StoreService, impl)
      // ForwardWrites again with its own limit: the router keeps the last handler of a path.
      .rpc(StoreService.method.forwardWrites, impl.forwardWrites, { readMaxBytes: FORWARD_MESSAGE_MAX });
  }

  /** The handlers, for connect-node and the direct gRPC path alike. */
  impl(): ServiceImpl<typeof StoreService> {
    return {
      ...shardHandlers({
        shards: this.o.shards,
        checkManagerTerm: (term, ctx, what) => this.checkTerm('manager', term, ctx, what),
        storeId: this.o.storeId,
        readChunkSize: this.o.readChunkSize,
      }),
      write: (reqs, ctx) => this.write(reqs, ctx),
      forwardWrites: (reqs, ctx) =>
        serveForwardWrites(reqs, (messages) => this.write(messages, ctx), this.draining.signal),
      stat: (req) =>
        mapErrors(async () => {
          checkId(req.blobId);
          const f = await this.o.store.stat(req.blobId, {
            cookie: req.cookie,
            includeDeleted: req.includeDeleted,
          });
          if (isStub(f)) {
            // A cold blob: answer the blob's facts with where its bytes are.
            return { needle: { ...factsMessage(f), ...(await coldFacts(this.o.store, req.blobId, f)) } };
          }
          return { needle: factsMessage(f) };
        }),
      listPlacementGroup: (req) =>
        mapErrors(async () => {
          const groupCount = req.groupCount;
          const problem = checkGroupCount(groupCount);
          if (problem) throw invalidArgument(`group_count: ${problem}`);
          if (req.group >= groupCount)
            throw invalidArgument(`group ${req.group} must be below group_count ${groupCount}`);
          if (req.pageSize > MAX_GROUP_PAGE)
            throw invalidArgument(`page_size ${req.pageSize} exceeds the maximum ${MAX_GROUP_PAGE}`);
          if (req.prefix !== '') {
            const bad = validateBlobId(req.prefix);
            if (bad) throw invalidArgument(`prefix: ${bad}`);
          }
          let after: GroupCursor | undefined;
          if (req.pageToken !== '') {
            const c = decodeGroupCursor(req.pageToken);
            if (typeof c === 'string') throw invalidArgument(c);
            after = c;
          }
          const page = await this.o.store.listPlacementGroup({
            groupCount,
            group: req.group,
            limit: req.pageSize || DEFAULT_GROUP_PAGE,
            includeDeleted: req.includeDeleted,
            prefix: req.prefix,
            ...(after ? { after } : {}),
          });
          return {
            needles: page.needles.map(factsMessage),
            nextPageToken: page.next ? encodeGroupCursor(page.next) : '',
          };
        }),
      getPlacementDigests: (req) =>
        mapErrors(async () => {
          const problem = checkGroupCount(req.groupCount);
          if (problem) throw invalidArgument(`group_count: ${problem}`);
          return {
            digests: this.o.store.placementDigests(req.groupCount).map((d) => ({
              group: d.group,
              needles: BigInt(d.needles),
              digest: d.digest,
            })),
          };
        }),
      read: (req, ctx) =>
        this.read(req.blobId, req.cookie, req.offset, req.length, ctx, req.rawStub, isClientRead(req, ctx)),
      delete: (req, ctx) =>
        mapErrors(async () => {
          checkId(req.blobId);
          const stamp = wireStamp('written_at_ms', req.writtenAtMs);
          // Term 0 refused from every caller over mTLS: a gateway sends its directory leader's
          // term (per-blob: the allocation's; placement groups: its view's), the manager its lease's.
          await this.checkTerm(issuerOf(ctx), req.term, ctx, 'Delete');
          return { found: await this.o.store.delete(req.blobId, stamp === undefined ? {} : { stamp }) };
        }),
      replicate: (req, ctx) =>
        mapErrors(async () => {
          checkId(req.blobId);
          await this.checkTerm('manager', req.term, ctx, 'Replicate');
          if (!req.source?.address) throw invalidArgument('source.address is required');
          pinnedStore('Replicate source', req.source);
          if (req.sha256.length !== 0 && req.sha256.length !== 32)
            throw invalidArgument('sha256 must be empty or 32 bytes');
          return this.replicate(req.blobId, req.cookie, req.source, req.sha256, req.keepStamp, ctx);
        }),
      compact: (req) =>
        mapErrors(async () => {
          const done = await this.o.store.compact(req.volumeId === 0 ? undefined : req.volumeId, req.force);
          return {
            compactions: done.map((c) => ({
              volumeId: c.volumeId,
              bytesBefore: BigInt(c.bytesBefore),
              bytesAfter: BigInt(c.bytesAfter),
              needlesKept: BigInt(c.needlesKept),
              durationMs: BigInt(Math.round(c.durationMs)),
            })),
          };
        }),
      scrub: (req) =>
        mapErrors(async () => {
          const r = await this.o.store.scrub(req.volumeId === 0 ? undefined : req.volumeId);
          // Whoever asked (the manager, an operator's `haystack scrub`), the manager hears of
          // current corrupt needles so it repairs them from a healthy replica.
          for (const c of r.corrupt) if (c.blobId && !c.superseded) this.o.onCorrupt?.(c.blobId);
          return {
            needlesChecked: BigInt(r.needlesChecked),
            bytesChecked: BigInt(r.bytesChecked),
            corrupt: r.corrupt.map((c) => ({
              blobId: c.blobId ?? '',
              volumeId: c.volumeId,
              offset: BigInt(c.offset),
              reason: c.reason,
              superseded: c.superseded,
            })),
          };
        }),
      rewrapKeys: () =>
        mapErrors(async () => {
          if (!this.o.rewrapper) {
            throw new FailedPreconditionError(
              `store ${this.o.storeId} has no key-encryption keys (KEK_FILE or KEKS): its volumes are plaintext, there are no keys to re-wrap`,
            );
          }
          const r = await this.o.rewrapper.rewrap();
          this.o.log.info({ ...r }, 'RewrapKeys: volume keys re-wrapped');
          return {
            storeId: this.o.storeId,
            newestKek: r.newestKek,
            volumesTotal: r.volumes,
            volumesRewrapped: r.rewrapped,
            keksInUse: r.keksInUse,
            reloaded: r.reloaded,
          };
        }),
      getStats: () =>
        mapErrors(async () => {
          const s = await this.o.store.stats();
          return {
            storeId: this.o.storeId,
            capacityBytes: BigInt(s.capacityBytes),
            freeBytes: BigInt(s.freeBytes),
            usedBytes: BigInt(s.usedBytes),
            needleCount: BigInt(s.needleCount),
            volumes: s.volumes.map(volumeStatsMessage),
          };
        }),
      listNeedles: (req) =>
        mapErrors(async () => {
          const { items, nextPageToken } = await keyPage(
            req.pageSize,
            req.pageToken,
            (after, n) => this.o.store.listNeedles(after, n),
            (n) => n.blobId,
          );
          return {
            needles: items.map((n) => ({
              blobId: n.blobId,
              volumeId: n.volumeId,
              size: BigInt(n.size),
              writtenAtMs: BigInt(n.writtenAtMs),
            })),
            nextPageToken,
          };
        }),
    };
  }

  /**
   * Fencing: a term older than one already seen from the same issuer means the
   * sender was deposed. Terms are bounded (what Redis holds, and not absurdly
   * ahead: one forged huge term would fence out every real sender). A mutating
   * call (`required` names it) must carry a term over mTLS: term 0 skips nothing.
   * A higher term is on disk before the call goes on (a restarted store still
   * refuses the deposed sender); at the durable term no I/O is done.
   */
  private async checkTerm(
    issuer: Issuer,
    term: bigint,
    ctx: HandlerContext,
    required?: string,
  ): Promise<void> {
    const fencing = this.o.fencing;
    const seen = fencing.highest(issuer);
    boundedFromPeer(`${issuer} term`, term, seen);
    if (term === 0n) {
      if (required && isAuthenticatedTransport(ctx)) {
        // UNAVAILABLE: a gateway that has not yet learnt the leader's term retries shortly.
        throw new ConnectError(
          `${required} must carry the sender's current fencing term (term 0 is refused); retry once it knows the term`,
          Code.Unavailable,
        );
      }
      return;
    }
    this.refuseDeposed(issuer, term, ctx);
    if (issuer === 'directory' && this.o.witness && term > this.o.witness.highest()) {
      await this.requireStated(term, ctx);
      // Other calls ran while the directories were asked: a newer term may be accepted now.
      this.refuseDeposed(issuer, term, ctx);
    }
    if (term <= fencing.persisted(issuer)) return;
    const previous = fencing.highest(issuer);
    if (term > previous)
      this.o.log.info({ issuer, term, previous, caller: callerIdentity(ctx)?.id }, 'fencing term advanced');
    try {
      await fencing.raise(issuer, term);
    } catch (err) {
      this.o.log.error({ err, issuer, term }, 'could not persist a fencing term');
      throw new ConnectError(
        `store ${this.o.storeId} could not persist ${issuer} term ${term} (${(err as Error).message}); nothing was done: retry`,
        Code.Unavailable,
      );
    }
    // A newer term may have been accepted while this one was written.
    this.refuseDeposed(issuer, term, ctx);
  }

  /**
   * A directory term reaches a store second-hand (a gateway's or a store's call): one
   * above what the directories have stated is acted on only once one of them states
   * it (term-witness.ts). PERMISSION_DENIED when every directory answers lower (no
   * directory holds the term: forged), UNAVAILABLE when too few answered to tell.
   */
  private async requireStated(term: bigint, ctx: HandlerContext): Promise<void> {
    const witness = this.o.witness;
    if (!witness || term <= witness.highest()) return;
    const v = await witness.confirm(term);
    if (v.ok) return;
    const { answer } = v;
    this.o.log.warn(
      {
        term,
        stated: answer.term,
        answered: answer.answered,
        of: answer.of,
        caller: callerIdentity(ctx)?.id,
      },
      'refused a directory term no directory stated',
    );
    if (v.reason === 'not-stated') {
      throw new ConnectError(
        `directory term ${term} was never issued: all ${answer.of} directories hold term ${answer.term} or lower. A gateway relays its directory leader's term; it cannot choose one`,
        Code.PermissionDenied,
      );
    }
    throw new ConnectError(
      `directory term ${term} is not confirmed yet: ${answer.answered} of ${answer.of} directories answered (highest term ${answer.term}); retry shortly`,
      Code.Unavailable,
    );
  }

  /** FAILED_PRECONDITION naming the newer term (FENCED_TERM_HEADER) when `term` is older than one accepted. */
  private refuseDeposed(issuer: Issuer, term: bigint, ctx: HandlerContext): void {
    const seen = this.o.fencing.highest(issuer);
    if (term >= seen) return;
    // The fencing log (info and up): what a deposed sender tried, for audits and test/netns.
    this.o.log.warn({ issuer, term, seen, caller: callerIdentity(ctx)?.id }, 'fenced out a deposed sender');
    throw new ConnectError(
      `${issuer} term ${term} is older than term ${seen} already seen: the sender was deposed`,
      Code.FailedPrecondition,
      { [FENCED_TERM_HEADER]: String(seen) },
    );
  }

  /**
   * Streams the blob to disk as chunks arrive and, in parallel, to every store in
   * forward_to; answers only when all of them hold it durably. The replicas get
   * the cookie and stamp this store answers (the original needle's on an
   * idempotent retry), so every replica ends with the same needle.
   */
  private async write(reqs: AsyncIterable<WriteRequest>, ctx: HandlerContext): Promise<WriteResponse> {
    const it = reqs[Symbol.asyncIterator]();
    const first = await it.next();
    if (first.done || first.value.msg.case !== 'header') {
      throw invalidArgument('the first Write message must be a header');
    }
    const h = first.value.msg.value;
    checkId(h.blobId);
    if (h.cold) return this.writeStub(h, it, ctx);
    if (h.contentType === STUB_CONTENT_TYPE) {
      throw invalidArgument(`content type ${STUB_CONTENT_TYPE} is reserved for cold stubs`);
    }
    if (h.sha256.length !== 0 && h.sha256.length !== 32)
      throw invalidArgument('sha256 must be empty or 32 bytes');
    const metaProblem =
      checkMetaField('content_type', h.contentType) ?? checkMetaField('file_name', h.fileName);
    if (metaProblem) throw invalidArgument(metaProblem);
    const stamp = wireStamp('written_at_ms', h.writtenAtMs);
    const size = Number(h.size);
    if (!Number.isSafeInteger(size)) throw invalidArgument(`size ${h.size} is too large`);
    const targets = h.forwardTo.filter((t) => t.storeId !== this.o.storeId);
    // Bounded, fenced when non-zero; required when this store is to fan the blob out (a
    // gateway's Write with forward_to carries its directory leader's term, in both modes).
    // The manager writes content back when it warms a cold blob: always under its lease term.
    const issuer = issuerOf(ctx);
    await this.checkTerm(
      issuer,
      h.term,
      ctx,
      issuer === 'manager'
        ? "the replication manager's Write"
        : targets.length > 0
          ? 'Write with forward_to'
          : undefined,
    );
    const pinned = targets.map((t) => ({ t, identity: pinnedStore('forward_to entry', t) }));
    // Every replica proves its identity before this store writes a byte: a request that
    // names a store at another server's address is refused with nothing written anywhere.
    await Promise.all(
      pinned.map(({ t, identity }) =>
        this.o.peers.handshake(t.address, identity, ctx.signal).catch((err: unknown) => {
          throw this.replicaError(t, err);
        }),
      ),
    );

    if (
      targets.length > 0 &&
      this.inlineMax > 0 &&
      size <= this.inlineMax &&
      targets.every((t) => this.forwards.supports(t))
    )
      return this.writeInline(h, it, size, stamp, targets, ctx);

    let writer: NeedleWriter | undefined;
    let forwards: ReturnType<StoreServiceImpl['forward']>[] = [];
    try {
      const w = await this.beginWrite(h, size, stamp);
      writer = w;
      const fwd: WriteHeader = { ...h, cookie: w.cookie, writtenAtMs: BigInt(w.writtenAtMs), forwardTo: [] };
      forwards = targets.map((t) => this.forward(t, fwd, ctx));
      for await (const chunk of boundedChunks(it, size, MAX_CHUNK)) {
        await Promise.all([w.write(chunk), ...forwards.map((f) => f.push(chunk))]);
      }
      const sha = h.sha256.length === 32 ? h.sha256 : undefined;
      let local: Awaited<ReturnType<NeedleWriter['commit']>>;
      if (w.existing) {
        // An idempotent candidate: only identical content may reach the replicas
        // under the original cookie and stamp, so compare before ending their streams.
        local = await mapErrors(() => w.commit(sha));
        writer = undefined;
        for (const f of forwards) f.end();
      } else {
        for (const f of forwards) f.end();
        local = await mapErrors(() => w.commit(sha));
        writer = undefined;
      }
      return this.answerWrite(h, local, await Promise.all(forwards.map((f) => f.result)));
    } catch (err) {
      for (const f of forwards) f.abort(err);
      await writer?.abort().catch(() => {});
      // Settle forward results so none is left unhandled.
      await Promise.allSettled(forwards.map((f) => f.result));
      throw toConnectError(err);
    }
  }

  /**
   * A Write with forward_to of a blob small enough for one message: the content is
   * read whole (inlineMax bytes at most), buffered into the needle, then sent to each
   * replica on this store's ForwardWrites stream to it while the needle commits here
   * (after the commit when an identical needle is already here, as on a Write stream).
   * Answers once every replica holds it durably, as write() does.
   */
  private async writeInline(
    h: WriteHeader,
    it: AsyncIterator<WriteRequest>,
    size: number,
    stamp: number | undefined,
    targets: StoreTarget[],
    ctx: HandlerContext,
  ): Promise<WriteResponse> {
    const parts: Uint8Array[] = [];
    for await (const chunk of boundedChunks(it, size, MAX_CHUNK)) parts.push(chunk);
    const content = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
    let writer: NeedleWriter | undefined;
    try {
      const w = await this.beginWrite(h, size, stamp);
      writer = w;
      // Field by field, not { ...h }: unknown fields of the caller's header would ride along
      // and could push the message past the replica's limit, failing the whole shared stream.
      const fwd = create(WriteHeaderSchema, {
        blobId: h.blobId,
        cookie: w.cookie,
        size: h.size,
        sha256: h.sha256,
        term: h.term,
        contentType: h.contentType,
        fileName: h.fileName,
        writtenAtMs: BigInt(w.writtenAtMs),
      });
      const send = () =>
        targets.map((t) => {
          const answer = this.forwards.write(t, fwd, content, ctx.signal).catch((err: unknown) => {
            throw this.replicaError(t, err);
          });
          // Handled now: a replica may fail while this store's own commit is still running.
          answer.catch(() => {});
          return answer;
        });
      await w.write(content);
      const sha = h.sha256.length === 32 ? h.sha256 : undefined;
      let local: Awaited<ReturnType<NeedleWriter['commit']>>;
      let remote: Promise<WriteResponse>[];
      if (w.existing) {
        // Only identical content may reach the replicas under the original cookie and stamp.
        local = await mapErrors(() => w.commit(sha));
        writer = undefined;
        remote = send();
      } else {
        remote = send();
        local = await mapErrors(() => w.commit(sha));
        writer = undefined;
      }
      return this.answerWrite(h, local, await Promise.all(remote));
    } catch (err) {
      await writer?.abort().catch(() => {});
      // The replicas' answers are handled already (send): none is waited for, a slow replica
      // must not delay this failure (their writes cannot be called back once sent).
      throw toConnectError(err);
    }
  }

  private beginWrite(h: WriteHeader, size: number, stamp: number | undefined): Promise<NeedleWriter> {
    return mapErrors(() =>
      this.o.store.beginWrite(h.blobId, h.cookie, size, {
        contentType: h.contentType,
        fileName: h.fileName,
        // A forwarded write carries the first store's stamp: stamp order decides
        // (an older needle here, e.g. an unacknowledged earlier attempt, is
        // superseded), so every replica ends with the first store's cookie.
        ...(stamp === undefined ? {} : { stamp, keepStamp: true }),
      }),
    );
  }

  /** A Write's answer: this store's needle first, then every replica's. */
  private answerWrite(
    h: WriteHeader,
    local: Awaited<ReturnType<NeedleWriter['commit']>>,
    remote: readonly WriteResponse[],
  ): WriteResponse {
    const replicas: WrittenReplica[] = [
      create(WrittenReplicaSchema, {
        storeId: this.o.storeId,
        volumeId: local.volumeId,
        offset: BigInt(local.offset),
      }),
      ...remote.flatMap((r) => r.replicas),
    ];
    return create(WriteResponseSchema, {
      blobId: h.blobId,
      size: h.size,
      sha256: local.sha256,
      crc32c: local.crc32c,
      replicas,
      cookie: local.cookie,
      writtenAtMs: BigInt(local.writtenAtMs),
    });
  }

  /** A Write with `cold`: the replication manager replaces this store's full needle with a stub (cold-stub.ts). */
  private async writeStub(
    h: WriteHeader,
    rest: AsyncIterator<WriteRequest>,
    ctx: HandlerContext,
  ): Promise<WriteResponse> {
    const stamp = wireStamp('written_at_ms', h.writtenAtMs);
    if (stamp === undefined)
      throw invalidArgument('a cold stub needs written_at_ms above the needle it replaces');
    if (isAuthenticatedTransport(ctx) && callerIdentity(ctx)?.role !== 'replication') {
      throw new ConnectError('only the replication manager writes cold stubs', Code.PermissionDenied);
    }
    await this.checkTerm('manager', h.term, ctx, 'a cold stub Write');
    return mapErrors(() => writeStub(this.o.store, this.o.storeId, h, stamp, rest));
  }

  /** Opens a Write stream to one replica; chunks are pushed with backpressure. */
  private forward(target: StoreTarget, header: WriteHeader, ctx: HandlerContext) {
    const pipe = new AsyncPipe<WriteRequest>(4);
    const abort = new AbortController();
    const onParentAbort = () => abort.abort();
    ctx.signal.addEventListener('abort', onParentAbort, { once: true });
    void pipe.push(create(WriteRequestSchema, { msg: { case: 'header', value: header } }));
    const client = this.o.peers.client(StoreService, target.address, pinnedStore('forward_to entry', target));
    const result = client.write(pipe, { signal: abort.signal }).then(
      (res) => res,
      (err: unknown) => {
        throw this.replicaError(target, err);
      },
    );
    result.catch(() => pipe.end()).finally(() => ctx.signal.removeEventListener('abort', onParentAbort));
    return {
      result,
      push: async (chunk: Uint8Array) => {
        await pipe.push(create(WriteRequestSchema, { msg: { case: 'chunk', value: chunk } }));
      },
      end: () => pipe.end(),
      abort: (err: unknown) => {
        pipe.fail(err);
        abort.abort();
      },
    };
  }

  /** A forward to `target` failed: FAILED_PRECONDITION for the wrong server, else UNAVAILABLE (or the replica's refusal). */
  private replicaError(target: StoreTarget, err: unknown): ConnectError {
    const wrong = wrongPeer('forward_to entry', target, err);
    if (wrong) return wrong;
    const ce = ConnectError.from(err);
    return new ConnectError(
      `replica store "${target.storeId}" (${target.address}) failed: ${ce.rawMessage}`,
      ce.code === Code.AlreadyExists || ce.code === Code.ResourceExhausted ? ce.code : Code.Unavailable,
    );
  }

  private async *read(
    blobId: string,
    cookie: bigint,
    offset: bigint,
    length: bigint,
    ctx: HandlerContext,
    rawStub = false,
    clientRead = true,
  ): AsyncGenerator<ReadResponse> {
    try {
      checkId(blobId);
      const r = await this.o.store
        .openRead(blobId, cookie === 0n ? undefined : cookie)
        .catch((err: unknown) => {
          if (cookie !== 0n && err instanceof NotFoundError) this.o.onCookieCheck?.('refused');
          throw err;
        });
      this.o.onCookieCheck?.(cookie === 0n ? 'skipped' : 'passed');
      if (isStub(r) && !rawStub) {
        const ref = (await coldFacts(this.o.store, blobId, r)).cold;
        throw new ConnectError(
          `blob ${blobId} is erasure-coded (stripe ${ref?.stripeId ?? '?'}): read its shards`,
          Code.FailedPrecondition,
        );
      }
      const size = r.size;
      const start = Number(offset);
      if (start > size) {
        throw new ConnectError(`offset ${offset} is past the end of the ${size}-byte blob`, Code.OutOfRange);
      }
      const len = length === 0n ? size - start : Math.min(Number(length), size - start);
      if (clientRead) this.o.onRead?.(blobId);
      yield create(ReadResponseSchema, {
        msg: {
          case: 'header',
          value: {
            size: BigInt(size),
            offset: BigInt(start),
            length: BigInt(len),
            crc32c: r.crc32c,
            volumeId: r.volumeId,
            needle: factsMessage(r),
          },
        },
      });
      for await (const chunk of r.stream(start, len, this.o.readChunkSize)) {
        if (ctx.signal.aborted) return;
        yield create(ReadResponseSchema, { msg: { case: 'chunk', value: chunk } });
      }
    } catch (err) {
      const ce = toConnectError(err);
      if (ce.code === Code.DataLoss) this.o.onCorrupt?.(blobId);
      throw ce;
    }
  }

  /**
   * Pulls a blob from another store's Read stream and writes it here durably.
   * With keep_stamp the copy takes the source needle's stamp, cookie and facts
   * verbatim, and a needle here with a newer stamp, or an equal one that is
   * intact, is kept (the call succeeds without copying the content); a damaged
   * equal-stamp needle is replaced 1 ms above it (store-write.ts). Without
   * it the copy is a new needle stamped here (it may supersede this store's
   * tombstone of the id).
   */
  private async replicate(
    blobId: string,
    cookie: bigint,
    source: StoreTarget,
    sha256: Uint8Array,
    keepStamp: boolean,
    ctx: HandlerContext,
  ) {
    const client = this.o.peers.client(StoreService, source.address, pinnedStore('Replicate source', source));
    const abort = new AbortController();
    const onParentAbort = () => abort.abort();
    ctx.signal.addEventListener('abort', onParentAbort, { once: true });
    // A cold stub is copied as the stub needle it is (backfill, anti-entropy).
    const stream = client.read({ blobId, cookie, rawStub: true, internal: true }, { signal: abort.signal });
    let writer: NeedleWriter | undefined;
    let expected = sha256.length === 32 ? sha256 : undefined;
    try {
      for await (const msg of stream) {
        if (msg.msg.case === 'header') {
          const size = Number(msg.msg.value.size);
          const facts = msg.msg.value.needle;
          if (keepStamp && (!facts || facts.writtenAtMs <= 0n)) {
            throw new ConnectError(
              `source ${source.storeId} does not report the needle's stamp; keep_stamp needs a store with placement groups`,
              Code.FailedPrecondition,
            );
          }
          if (keepStamp && facts && facts.writtenAtMs > BigInt(Date.now() + MAX_STAMP_AHEAD_MS)) {
            throw new ConnectError(
              `source ${source.storeId} stamped ${blobId} at ${facts.writtenAtMs}, more than ${MAX_STAMP_AHEAD_MS / 60_000} minutes ahead of this store's clock; check the clocks`,
              Code.FailedPrecondition,
            );
          }
          if (facts?.sha256.length === 32) {
            if (expected && !Buffer.from(expected).equals(Buffer.from(facts.sha256))) {
              throw new ConnectError(
                `source ${source.storeId} holds other content for ${blobId} than the expected SHA-256`,
                Code.DataLoss,
              );
            }
            expected = facts.sha256;
          }
          writer = await this.o.store.beginWrite(
            blobId,
            facts && cookie === 0n ? facts.cookie : cookie,
            size,
            {
              contentType: facts?.contentType ?? '',
              fileName: facts?.fileName ?? '',
              ...(keepStamp && facts ? { stamp: Number(facts.writtenAtMs), keepStamp: true } : {}),
            },
          );
          if (writer.kept) break; // a needle here is not older: nothing to copy
        } else if (msg.msg.case === 'chunk') {
          if (!writer)
            throw new ConnectError(`source ${source.storeId} sent data before its header`, Code.Internal);
          await writer.write(msg.msg.value);
        }
      }
      if (!writer) throw new ConnectError(`source ${source.storeId} sent no header`, Code.Internal);
      const w = writer;
      writer = undefined;
      const local = await w.commit(expected);
      return {
        replica: { storeId: this.o.storeId, volumeId: local.volumeId, offset: BigInt(local.offset) },
        size: BigInt(local.size),
      };
    } catch (err) {
      await writer?.abort().catch(() => {});
      const wrong = wrongPeer('Replicate source', source, err);
      if (wrong) throw wrong;
      const ce = toConnectError(err);
      if (ce.code === Code.InvalidArgument) {
        // A digest mismatch while copying means the source copy is bad.
        throw new ConnectError(
          `copy from ${source.storeId} failed verification: ${ce.rawMessage}`,
          Code.DataLoss,
        );
      }
      throw ce;
    } finally {
      abort.abort(); // ends the source stream if the copy stopped early
      ctx.signal.removeEventListener('abort', onParentAbort);
    }
  }
}
