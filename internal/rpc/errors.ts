import { Code, ConnectError } from '@connectrpc/connect';

/** Errors that carry a gRPC-style code as a string (e.g. the store engine's). */
interface CodedError {
  code:
    | 'NOT_FOUND'
    | 'ALREADY_EXISTS'
    | 'DATA_LOSS'
    | 'RESOURCE_EXHAUSTED'
    | 'INVALID_ARGUMENT'
    | 'FAILED_PRECONDITION';
  message: string;
}

const CODES: Record<CodedError['code'], Code> = {
  NOT_FOUND: Code.NotFound,
  ALREADY_EXISTS: Code.AlreadyExists,
  DATA_LOSS: Code.DataLoss,
  RESOURCE_EXHAUSTED: Code.ResourceExhausted,
  INVALID_ARGUMENT: Code.InvalidArgument,
  FAILED_PRECONDITION: Code.FailedPrecondition,
};

function isCoded(err: unknown): err is CodedError {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && code in CODES;
}

/** Maps domain errors to ConnectErrors; anything unknown becomes INTERNAL (with the message kept). */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (isCoded(err)) return new ConnectError(err.message, CODES[err.code], undefined, undefined, err);
  const errno = (err as { code?: unknown } | null)?.code;
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    return new ConnectError(
      'no space left on the store disk',
      Code.ResourceExhausted,
      undefined,
      undefined,
      err,
    );
  }
  return ConnectError.from(err, Code.Internal);
}

/** Wraps a handler so domain errors leave as proper gRPC statuses. */
export async function mapErrors<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toConnectError(err);
  }
}

export function invalidArgument(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}
