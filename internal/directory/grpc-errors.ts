import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { DirectoryError, NotLeaderError, WrongModeError } from './errors.js';
import {
  CLUSTER_MODE_HEADER,
  HAYSTACK_HEADER_PREFIX,
  LEADER_ADDRESS_HEADER,
  LEADER_ID_HEADER,
} from './peers.js';

const CODES: Record<DirectoryError['code'], Code> = {
  FAILED_PRECONDITION: Code.FailedPrecondition,
  UNAVAILABLE: Code.Unavailable,
  NOT_FOUND: Code.NotFound,
  ALREADY_EXISTS: Code.AlreadyExists,
  RESOURCE_EXHAUSTED: Code.ResourceExhausted,
};

/**
 * The one mapping of the directory's domain errors (errors.ts) to gRPC statuses.
 * NotLeaderError also carries the leader in `haystack-leader-address` /
 * `haystack-leader-id`; WrongModeError the cluster's mode in `haystack-cluster-mode`.
 * ConnectErrors (edge validation) pass unchanged, a forwarded call's answer with its
 * `haystack-` metadata (relayable); anything else is what connect makes of it (UNKNOWN).
 */
export function toConnectError(err: unknown): ConnectError {
  if (!(err instanceof DirectoryError)) return relayable(ConnectError.from(err));
  const ce = new ConnectError(err.message, CODES[err.code], undefined, undefined, err);
  if (err instanceof NotLeaderError && err.leader) {
    ce.metadata.set(LEADER_ADDRESS_HEADER, err.leader.address);
    ce.metadata.set(LEADER_ID_HEADER, err.leader.id);
  }
  if (err instanceof WrongModeError)
    ce.metadata.set(CLUSTER_MODE_HEADER, err.placement ? 'placement' : 'per-blob');
  return ce;
}

/**
 * A ConnectError received from a peer (a forwarded call's answer), made fit to answer
 * our own caller with: connect relays a wire error's code, message and details but not
 * its metadata (setTrailerStatus), and the metadata carries the leader's address and
 * the cluster's mode. Only those keys go on (relayedMetadata), not the peer's other
 * headers and trailers. Errors raised here pass unchanged.
 */
function relayable(ce: ConnectError): ConnectError {
  if (!ce.isWireError) return ce;
  const out = new ConnectError(ce.rawMessage, ce.code, relayedMetadata(ce.metadata), undefined, ce);
  out.details.push(...ce.details);
  return out;
}

/**
 * The part of a peer's error metadata (its response headers and trailers) to answer
 * on: the keys this project defines (`haystack-`: the leader hint, the cluster's
 * mode), so a peer cannot put arbitrary headers in our answers.
 */
export function relayedMetadata(received: Headers): Headers {
  const out = new Headers();
  for (const [key, value] of received) if (key.startsWith(HAYSTACK_HEADER_PREFIX)) out.append(key, value);
  return out;
}

type Impl = ServiceImpl<typeof DirectoryService>;

/** Wraps every handler of the DirectoryService implementation so errors leave mapped (unary and streams). */
export function withMappedErrors(impl: Impl): Impl {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(impl) as [string, (...a: unknown[]) => unknown][]) {
    out[name] = (req: unknown, ctx: HandlerContext) => {
      let res: unknown;
      try {
        res = fn(req, ctx);
      } catch (err) {
        throw toConnectError(err);
      }
      if (isAsyncIterable(res)) return mapStream(res);
      if (res instanceof Promise) return res.catch((err: unknown) => Promise.reject(toConnectError(err)));
      return res;
    };
  }
  return out as Impl;
}

async function* mapStream<T>(it: AsyncIterable<T>): AsyncGenerator<T> {
  try {
    yield* it;
  } catch (err) {
    throw toConnectError(err);
  }
}

function isAsyncIterable(x: unknown): x is AsyncIterable<unknown> {
  return typeof x === 'object' && x !== null && Symbol.asyncIterator in x;
}
