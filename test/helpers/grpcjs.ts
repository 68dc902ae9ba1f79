import {
  create,
  type DescMessage,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { tlsNodeOptions } from './pki.js';

/**
 * A unary call through @grpc/grpc-js, the reference gRPC stack, with messages
 * encoded by the generated protobuf-es schemas.
 */
export async function grpcJsUnary<I extends DescMessage, O extends DescMessage>(
  address: string,
  path: string,
  input: I,
  output: O,
  req: MessageInitShape<I>,
): Promise<MessageShape<O>> {
  // mTLS as the test admin (the servers require a client certificate).
  const t = await tlsNodeOptions();
  const client = new grpc.Client(
    address,
    grpc.credentials.createSsl(Buffer.from(t.ca), Buffer.from(t.key), Buffer.from(t.cert)),
  );
  return new Promise<MessageShape<O>>((resolve, reject) => {
    client.makeUnaryRequest(
      path,
      (m: MessageShape<I>) => Buffer.from(toBinary(input, m)),
      (b: Buffer) => fromBinary(output, b),
      create(input, req),
      (err, res) => {
        client.close();
        if (err || !res) reject(err ?? new Error('no response'));
        else resolve(res);
      },
    );
  });
}
