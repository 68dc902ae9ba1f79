import { type Client, ConnectError, createClient } from '@connectrpc/connect';
import { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { peerTransport } from '../rpc/transport.js';
import type { TransportSecurity } from '../security/tls-config.js';
import { tracedTransport } from '../server/tracing.js';

/**
 * The prefix of every header this project defines. Of an error a directory received
 * from a peer only these keys are answered on (grpc-errors.ts): the leader hint and
 * the cluster's mode below, never a header a peer made up.
 */
export const HAYSTACK_HEADER_PREFIX = 'haystack-';

/** Header on a request a directory forwarded to the leader (never forwarded again). */
export const FORWARDED_HEADER = 'haystack-forwarded';
/** Header (request) of a candidate fetching a peer's raw log while it catches up: its term. */
export const CATCHUP_TERM_HEADER = 'haystack-catchup-term';
/** Error/response metadata naming the leader's address, when known. */
export const LEADER_ADDRESS_HEADER = 'haystack-leader-address';
export const LEADER_ID_HEADER = 'haystack-leader-id';

/**
 * How long (ms) a keepalive PING to a directory may go unanswered, with no byte read
 * from the connection meanwhile, before the connection is dropped (gRPC A8's keepalive
 * timeout; gRPC's default is 20 s).
 */
export const PEER_PING_TIMEOUT_MS = 5_000;
/**
 * Error metadata of a call the cluster's mode refuses (WrongModeError): `placement`
 * or `per-blob`, the mode the directory is in.
 */
export const CLUSTER_MODE_HEADER = 'haystack-cluster-mode';

export type DirectoryClientStub = Client<typeof DirectoryService>;

/** gRPC clients to directory instances, one HTTP/2 session per address. */
export class PeerClients {
  private readonly clients = new Map<string, DirectoryClientStub>();

  /** `security`: whose certificate to show (default: this process's own, see rpc/transport.ts). */
  constructor(private readonly security?: TransportSecurity) {}

  get(address: string): DirectoryClientStub {
    let c = this.clients.get(address);
    if (!c) {
      c = createClient(
        DirectoryService,
        // mTLS: the server must prove it is a directory.
        tracedTransport(
          peerTransport(
            address,
            ['directory'],
            {
              // Notice a dead peer on an idle stream too. The answer may take seconds
              // at load 30–40 on two cores (a 1 s limit failed UpdatePlacement calls
              // that were 1.1–2.8 s from done, so backfills stalled): a dead peer is
              // noticed within 6 s, and calls and streams have their own deadlines.
              pingIntervalMs: 1000,
              pingTimeoutMs: PEER_PING_TIMEOUT_MS,
              pingIdleConnection: true,
              idleConnectionTimeoutMs: 60_000,
            },
            this.security,
          ),
        ),
      );
      this.clients.set(address, c);
    }
    return c;
  }
}

/** The leader address carried by an error, if any. */
export function leaderHintOf(err: unknown): string | null {
  if (!(err instanceof ConnectError)) return null;
  const h = err.metadata.get(LEADER_ADDRESS_HEADER);
  if (h) return h;
  const m = /the leader is \S+ at (\S+?)(?:;|$|\s)/.exec(err.rawMessage);
  return m?.[1] ?? null;
}
