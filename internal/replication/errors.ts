/**
 * Typed errors of the replication manager's logic. The service maps them to
 * gRPC once with internal/rpc/errors.ts (`toConnectError`, by the `code` string):
 * StandbyError → FAILED_PRECONDITION.
 */
export class StandbyError extends Error {
  readonly code = 'FAILED_PRECONDITION' as const;
  constructor(message = 'this replication manager is on standby (it does not hold the lease)') {
    super(message);
    this.name = 'StandbyError';
  }
}
