import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import type { DirectoryService } from '../../../gen/haystack/v1/directory_pb.js';
import {
  AlreadyExistsError,
  NoPlacementError,
  NotFoundError,
  NotLeaderError,
  PlacementPendingError,
  StaleTermError,
  TombstonesPendingError,
  UnavailableError,
  VersionMismatchError,
  WrongModeError,
} from '../../../internal/directory/errors.js';
import {
  relayedMetadata,
  toConnectError,
  withMappedErrors,
} from '../../../internal/directory/grpc-errors.js';
import {
  CLUSTER_MODE_HEADER,
  HAYSTACK_HEADER_PREFIX,
  LEADER_ADDRESS_HEADER,
  LEADER_ID_HEADER,
  leaderHintOf,
} from '../../../internal/directory/peers.js';

describe('directory domain errors → gRPC (grpc-errors.ts)', () => {
  it('maps each error to its status and keeps the message', () => {
    const cases: [Error, Code][] = [
      [new UnavailableError('no leader'), Code.Unavailable],
      [new NotFoundError('blob b not found'), Code.NotFound],
      [new AlreadyExistsError('blob b already exists'), Code.AlreadyExists],
      [new StaleTermError('candidate term 3 is stale: current term 5'), Code.FailedPrecondition],
      [new VersionMismatchError('blob b is at version 4'), Code.FailedPrecondition],
      [new TombstonesPendingError('tombstones pending'), Code.FailedPrecondition],
      [new WrongModeError('no placement groups', false), Code.FailedPrecondition],
      [new PlacementPendingError('placement groups not applied here yet'), Code.Unavailable],
      [new NoPlacementError('need 3 healthy writable stores', 'unavailable'), Code.Unavailable],
      [new NoPlacementError('need 3 stores with room', 'exhausted'), Code.ResourceExhausted],
    ];
    for (const [err, code] of cases) {
      const ce = toConnectError(err);
      expect(ce.code, err.name).toBe(code);
      expect(ce.rawMessage).toBe(err.message);
    }
  });

  it("WrongModeError names the cluster's mode in the metadata, so a gateway whose map lags can tell", () => {
    const on = toConnectError(
      new WrongModeError('AllocateWrite is not used on a cluster with placement groups', true),
    );
    expect(on.metadata.get(CLUSTER_MODE_HEADER)).toBe('placement');
    const off = toConnectError(new WrongModeError('this cluster has no placement groups', false));
    expect(off.metadata.get(CLUSTER_MODE_HEADER)).toBe('per-blob');
    expect(toConnectError(new VersionMismatchError('re-read')).metadata.get(CLUSTER_MODE_HEADER)).toBeNull();
  });

  it("a forwarded call's answer (an error received from the leader) is answered on with its metadata", () => {
    const received = new ConnectError(
      'Delete is not used on a cluster with placement groups',
      Code.FailedPrecondition,
      {
        [CLUSTER_MODE_HEADER]: 'placement',
      },
    );
    received.isWireError = true; // as connect marks an error read from trailers: it would not re-send its metadata
    const out = toConnectError(received);
    expect(out.isWireError).toBe(false);
    expect(out.code).toBe(Code.FailedPrecondition);
    expect(out.rawMessage).toBe(received.rawMessage);
    expect(out.metadata.get(CLUSTER_MODE_HEADER)).toBe('placement');
  });

  it("relays only the project's own keys of a received error: the leader hint and the mode, nothing a peer made up", () => {
    // Every header the directory sets on an error, as a follower receives it from the leader.
    const sent = [
      toConnectError(new NotLeaderError('not the leader', { id: 'd0', address: '10.0.0.1:7000' })),
      toConnectError(new WrongModeError('List is not used on a cluster with placement groups', true)),
    ];
    for (const ce of sent) {
      const keys = [...ce.metadata.keys()];
      expect(keys.length).toBeGreaterThan(0);
      for (const k of keys) expect(k.startsWith(HAYSTACK_HEADER_PREFIX), k).toBe(true);
      const received = new ConnectError(ce.rawMessage, ce.code, ce.metadata);
      received.isWireError = true;
      expect([...toConnectError(received).metadata]).toEqual([...ce.metadata]);
    }
    // A received error's metadata is the peer's response headers and trailers, whatever they hold.
    const received = new ConnectError('not the leader', Code.FailedPrecondition, {
      [LEADER_ADDRESS_HEADER]: '10.0.0.1:7000',
      [LEADER_ID_HEADER]: 'd0',
      [CLUSTER_MODE_HEADER]: 'placement',
      'content-type': 'application/grpc',
      'set-cookie': 'session=evil',
      'x-injected': 'yes',
      location: 'https://elsewhere.example',
      'www-authenticate': 'Basic',
    });
    received.isWireError = true;
    const out = toConnectError(received);
    expect(Object.fromEntries(out.metadata)).toEqual({
      [CLUSTER_MODE_HEADER]: 'placement',
      [LEADER_ADDRESS_HEADER]: '10.0.0.1:7000',
      [LEADER_ID_HEADER]: 'd0',
    });
    expect(
      relayedMetadata(new Headers({ 'x-haystack-rate-limited': 'upload' })).has('x-haystack-rate-limited'),
    ).toBe(false);
  });

  it('NotLeaderError names the leader in the message and the metadata, so clients follow it', () => {
    const ce = toConnectError(
      new NotLeaderError('directory d1 is not the leader', { id: 'd0', address: '10.0.0.1:7000' }),
    );
    expect(ce.code).toBe(Code.FailedPrecondition);
    expect(ce.rawMessage).toBe('directory d1 is not the leader; the leader is d0 at 10.0.0.1:7000');
    expect(ce.metadata.get(LEADER_ADDRESS_HEADER)).toBe('10.0.0.1:7000');
    expect(ce.metadata.get(LEADER_ID_HEADER)).toBe('d0');
    expect(leaderHintOf(ce)).toBe('10.0.0.1:7000');
  });

  it('a forwarded request that reached a non-leader is UNAVAILABLE; without a leader there is no hint', () => {
    const fwd = toConnectError(
      new NotLeaderError(
        'not the leader (forwarded request)',
        { id: 'a', address: 'h:1' },
        { forwarded: true },
      ),
    );
    expect(fwd.code).toBe(Code.Unavailable);
    const none = toConnectError(new NotLeaderError('not the leader', null));
    expect(none.rawMessage).toBe('not the leader');
    expect(leaderHintOf(none)).toBeNull();
  });

  it('passes ConnectErrors through and leaves other errors UNKNOWN', () => {
    const ce = new ConnectError('bad id', Code.InvalidArgument);
    expect(toConnectError(ce)).toBe(ce);
    expect(toConnectError(new Error('disk on fire')).code).toBe(Code.Unknown);
  });

  it('wraps unary, throwing and streaming handlers', async () => {
    const ctx = {} as HandlerContext;
    const impl = withMappedErrors({
      locate: async () => {
        throw new NotFoundError('gone');
      },
      list: () => {
        throw new UnavailableError('later');
      },
      watchMetadata: async function* () {
        yield* [];
        throw new StaleTermError('catch-up term 1 is stale');
      },
    } as Partial<ServiceImpl<typeof DirectoryService>> as ServiceImpl<typeof DirectoryService>);
    const call = (fn: () => unknown) =>
      Promise.resolve()
        .then(fn)
        .then(
          () => null,
          (e: unknown) => e,
        );
    const unary = (await call(() =>
      (impl.locate as (r: unknown, c: HandlerContext) => unknown)({}, ctx),
    )) as ConnectError;
    expect(unary.code).toBe(Code.NotFound);
    const sync = (await call(() =>
      (impl.list as (r: unknown, c: HandlerContext) => unknown)({}, ctx),
    )) as ConnectError;
    expect(sync.code).toBe(Code.Unavailable);
    const stream = (impl.watchMetadata as (r: unknown, c: HandlerContext) => AsyncIterable<unknown>)({}, ctx);
    const streamed = (await call(async () => {
      for await (const _ of stream) {
        // no messages
      }
    })) as ConnectError;
    expect(streamed).toBeInstanceOf(ConnectError);
    expect(streamed.code).toBe(Code.FailedPrecondition);
  });
});
