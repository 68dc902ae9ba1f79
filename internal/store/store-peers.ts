import { Code, ConnectError } from '@connectrpc/connect';
import type { StoreTarget } from '../../gen/haystack/v1/common_pb.js';
import { invalidArgument } from '../rpc/errors.js';
import { type Identity, isInstanceId } from '../security/identity.js';
import { isPeerIdentityMismatch } from '../security/tls-config.js';

/**
 * The stores a request makes this store dial (Write.forward_to entries,
 * Replicate.source) are pinned: the connection must prove the identity of
 * exactly the store the entry names, spiffe://haystack/store/<store_id>, not
 * just some store (see docs/security.md, "SSRF"). So an address of another
 * store, of a gateway or directory, or of any other listener is refused at the
 * TLS handshake, before a byte of the request leaves this store.
 */

/** The identity `target` (named in the request as `what`) must prove; INVALID_ARGUMENT when it cannot name one. */
export function pinnedStore(what: string, target: StoreTarget): Identity {
  if (!isInstanceId(target.storeId)) {
    throw invalidArgument(
      `${what} store_id "${target.storeId.slice(0, 80)}" is not a store id ([A-Za-z0-9._-]{1,64}): the store dialled must prove that identity`,
    );
  }
  if (!target.address) throw invalidArgument(`${what} for store "${target.storeId}" has no address`);
  return { role: 'store', id: target.storeId };
}

/**
 * FAILED_PRECONDITION for a peer that proved another identity than `target`
 * names: retrying the same entry cannot help; the caller must name the store at
 * its registered address. Undefined for any other failure.
 */
export function wrongPeer(what: string, target: StoreTarget, err: unknown): ConnectError | undefined {
  if (!isPeerIdentityMismatch(err)) return undefined;
  return new ConnectError(
    `${what} names store "${target.storeId}" at ${target.address}, but the server there is not that store (${ConnectError.from(err).rawMessage}): ` +
      'name a registered store at the address it registered (DirectoryService.GetClusterStatus lists them)',
    Code.FailedPrecondition,
  );
}
