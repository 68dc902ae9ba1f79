import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import {
  type BalancePlacementRequest,
  type BalancePlacementResponse,
  BalancePlacementResponseSchema,
  type DrainStoreRequest,
  type DrainStoreResponse,
  DrainStoreResponseSchema,
  PlacementMoveSchema,
  type StorePlacementLoad,
  StorePlacementLoadSchema,
} from '../../gen/haystack/v1/directory_pb.js';
import type { StoreRecord } from '../../gen/haystack/v1/metadata_pb.js';
import { NotFoundError, WrongModeError } from './errors.js';
import type { DirectoryNode } from './node.js';
import type { PlacementKeeper } from './placement-keeper.js';
import { movesInProgress, planBalance, storeLoads } from './placement-moves.js';
import { eligible } from './placement-plan.js';

/** BalancePlacement's max_moves when 0, and its bound. */
export const DEFAULT_BALANCE_MOVES = 16;
export const MAX_BALANCE_MOVES = 1024;

/**
 * The operators' placement RPCs, DrainStore and BalancePlacement (leader only:
 * DirectoryHandlers forwards). They decide with placement-moves.ts and commit
 * through the PlacementKeeper's queue, so they never race its own changes; the
 * keeper then starts drain moves and finishes every move whose replacement the
 * replication manager has backfilled.
 */
export class PlacementAdmin {
  constructor(
    private readonly node: DirectoryNode,
    private readonly keeper: PlacementKeeper,
  ) {}

  /**
   * Each registered store's share of the placement (GetClusterStatus, DrainStore),
   * from `records` (the leader's live view, for status) or the logged ones.
   */
  loads(records: Iterable<StoreRecord> = this.node.state.stores.values()): StorePlacementLoad[] {
    const p = this.node.state.placement;
    if (!p.enabled) return [];
    const stores = [...records].map((s) => ({
      storeId: s.storeId,
      draining: s.draining,
      shards: s.shards?.count ?? 0n,
    }));
    return storeLoads(p.groups, p.extras.values(), stores);
  }

  private requirePlacement(method: string): void {
    if (!this.node.state.placement.enabled) {
      throw new WrongModeError(
        `${method} moves placement-group memberships; this cluster has none (PLACEMENT_GROUPS=0 keeps per-blob records)`,
        false,
      );
    }
  }

  async drainStore(req: DrainStoreRequest): Promise<DrainStoreResponse> {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(req.storeId)) {
      throw new ConnectError(`invalid store id ${JSON.stringify(req.storeId)}`, Code.InvalidArgument);
    }
    this.requirePlacement('DrainStore');
    return this.keeper.exclusive(async () => {
      const rec = this.node.state.stores.get(req.storeId);
      if (!rec) {
        throw new NotFoundError(
          `no store ${req.storeId}; registered: ${[...this.node.state.stores.keys()].sort().join(', ') || 'none'}`,
        );
      }
      const draining = !req.undrain;
      let commitIndex = 0n;
      if (rec.draining !== draining) {
        if (draining) this.checkRoomWithout(req.storeId);
        commitIndex = await this.node.propose({
          case: 'storeDrainChanged',
          value: { storeId: req.storeId, draining },
        });
        this.node.log.warn(
          { store: req.storeId, draining },
          draining ? 'store draining: its memberships move to other stores' : 'store no longer draining',
        );
      }
      const load =
        this.loads().find((l) => l.storeId === req.storeId) ??
        create(StorePlacementLoadSchema, { storeId: req.storeId, draining });
      return create(DrainStoreResponseSchema, { commitIndex, load });
    });
  }

  /**
   * A drain needs somewhere to go: FAILED_PRECONDITION when the stores left
   * eligible for placement (HEALTHY, writable, not draining) are fewer than the
   * largest group (its staying members, or its EC members: k + m distinct
   * stores), since its members could then never all be replaced.
   */
  private checkRoomWithout(storeId: string): void {
    const left = this.keeper
      .candidates()
      .filter((c) => c.storeId !== storeId && eligible(c))
      .map((c) => c.storeId);
    // Staying members: a group in the middle of a move has a leaving one besides. A
    // group's EC members (k + m distinct stores) need as many to move a shard store.
    const size = Math.max(
      0,
      ...this.node.state.placement.groups.map((g) =>
        Math.max(g?.members.filter((m) => !m.leaving).length ?? 0, g?.ecMembers.length ?? 0),
      ),
    );
    if (left.length < size) {
      throw new ConnectError(
        `draining ${storeId} leaves ${left.length} stores eligible for placement (${left.join(', ') || 'none'}), and placement groups need ${size} (members, or k + m EC members): add a store (or repair one) first`,
        Code.FailedPrecondition,
      );
    }
  }

  async balance(req: BalancePlacementRequest): Promise<BalancePlacementResponse> {
    if (req.maxMoves > MAX_BALANCE_MOVES) {
      throw new ConnectError(`max_moves ${req.maxMoves} is above ${MAX_BALANCE_MOVES}`, Code.InvalidArgument);
    }
    this.requirePlacement('BalancePlacement');
    return this.keeper.exclusive(async () => {
      const p = this.node.state.placement;
      const plan = planBalance(p.groups, this.keeper.candidates(), req.maxMoves || DEFAULT_BALANCE_MOVES);
      const inProgress = movesInProgress(p.groups);
      let commitIndex = 0n;
      if (!req.dryRun && plan.changed.length > 0) {
        commitIndex = await this.node.propose({
          case: 'placementChanged',
          value: { groupCount: 0, groups: plan.changed },
        });
        this.node.log.info({ moves: plan.moves }, 'placement: balance moves started');
      }
      const asLoads = (m: Map<string, number>) =>
        [...m]
          .sort((a, b) => (a[0] < b[0] ? -1 : 1))
          .map(([storeId, memberships]) => create(StorePlacementLoadSchema, { storeId, memberships }));
      return create(BalancePlacementResponseSchema, {
        moves: plan.moves.map((m) =>
          create(PlacementMoveSchema, { group: m.group, fromStoreId: m.from, toStoreId: m.to }),
        ),
        before: asLoads(plan.before),
        after: asLoads(plan.after),
        commitIndex,
        inProgress,
      });
    });
  }
}
