import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import { callerKey, describeIdentity, type Role } from './identity.js';

/**
 * Checks a handler makes at the service edge, beyond the role table
 * (authz.ts): who a caller claims to be inside the message must be who its
 * certificate says, and numbers from peers must be ones a peer can hold.
 * In plaintext mode (INSECURE_PLAINTEXT=1) identity checks pass; bounds never do.
 */

/** Largest value Redis represents for the term counter (a signed 64-bit integer). */
export const MAX_WIRE_INT64 = (1n << 63n) - 1n;
/**
 * How far a peer's term may run ahead of ours: each election adds one, so a
 * peer that missed a million elections is not a peer but an attacker.
 */
export const MAX_TERM_AHEAD = 1n << 20n;

/** Throws PERMISSION_DENIED unless the caller's certificate is `role`/`id` (the id the message claims). */
export function requireSelf(ctx: HandlerContext, role: Role, id: string, what: string): void {
  const c = ctx.values.get(callerKey);
  if (!c || c.transport === 'plaintext') return;
  const me = c.identity;
  if (!me || me.role !== role || me.id !== id) {
    throw new ConnectError(
      `${describeIdentity(me)} may not ${what} as ${role} "${id}": the certificate names another identity`,
      me ? Code.PermissionDenied : Code.Unauthenticated,
    );
  }
}

/**
 * Throws unless the caller is a configured directory peer (role directory and,
 * when DIRECTORY_PEER_IDS is set, one of those ids).
 */
export function requireDirectoryPeer(ctx: HandlerContext, what: string): void {
  const c = ctx.values.get(callerKey);
  if (!c || c.transport === 'plaintext') return;
  const me = c.identity;
  if (!me) throw new ConnectError(`${what} requires a directory peer's certificate`, Code.Unauthenticated);
  const peer =
    me.role === 'directory' && (c.directoryPeerIds.length === 0 || c.directoryPeerIds.includes(me.id));
  if (!peer) {
    throw new ConnectError(
      `${describeIdentity(me)} is not a configured directory peer: ${what} refused`,
      Code.PermissionDenied,
    );
  }
}

/**
 * A term or index from a peer: at most what Redis represents and, when `current`
 * is given, at most MAX_TERM_AHEAD beyond it. INVALID_ARGUMENT otherwise.
 */
export function boundedFromPeer(name: string, value: bigint, current?: bigint): bigint {
  if (value < 0n || value > MAX_WIRE_INT64) {
    throw new ConnectError(`${name} ${value} is out of range [0, 2^63-1]`, Code.InvalidArgument);
  }
  if (current !== undefined && value > current + MAX_TERM_AHEAD) {
    throw new ConnectError(
      `${name} ${value} is implausible: more than ${MAX_TERM_AHEAD} beyond the current ${current}`,
      Code.InvalidArgument,
    );
  }
  return value;
}

/** A decimal term carried in a header (absent: 0), bounded as above. */
export function termHeader(ctx: HandlerContext, header: string, current?: bigint): bigint {
  const raw = ctx.requestHeader.get(header);
  if (raw === null || raw === '') return 0n;
  if (!/^\d{1,20}$/.test(raw)) {
    throw new ConnectError(
      `header ${header} must be a decimal term, got "${raw.slice(0, 40)}"`,
      Code.InvalidArgument,
    );
  }
  return boundedFromPeer(`header ${header}`, BigInt(raw), current);
}

/**
 * A store's heartbeat stream, checked message by message: the store id must be
 * the one in the caller's certificate (a store speaks only for itself; it
 * cannot register a stranger or move another store's address), and the space
 * it reports must be consistent (free ≤ capacity ≤ 2^63-1).
 */
export async function* onlyAsSelf<T extends { storeId: string; capacityBytes: bigint; freeBytes: bigint }>(
  requests: AsyncIterable<T>,
  ctx: HandlerContext,
): AsyncGenerator<T> {
  for await (const req of requests) {
    requireSelf(ctx, 'store', req.storeId, 'heartbeat');
    boundedFromPeer('capacity_bytes', req.capacityBytes);
    if (req.freeBytes > req.capacityBytes) {
      throw new ConnectError(
        `free_bytes ${req.freeBytes} exceeds capacity_bytes ${req.capacityBytes}`,
        Code.InvalidArgument,
      );
    }
    yield req;
  }
}
