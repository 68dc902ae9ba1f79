import { create, createRegistry, type DescFile, type Registry, toBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import { Code, type ConnectRouter } from '@connectrpc/connect';
import * as v1 from '../../gen/grpc/reflection/v1/reflection_pb.js';
import * as v1alpha from '../../gen/grpc/reflection/v1alpha/reflection_pb.js';

type Request = v1.ServerReflectionRequest;
type Response = v1.ServerReflectionResponse;

/**
 * gRPC server reflection (v1 and v1alpha), answered from the descriptors compiled
 * into gen/, so grpcurl can list and describe services with no .proto files.
 */
export function registerReflection(
  router: ConnectRouter,
  roots: readonly DescFile[],
  services: readonly string[],
): void {
  const index = new FileIndex(roots);
  const answer = (req: Request): Response => respond(index, services, req);
  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield answer(req);
    },
  });
  // v1alpha has the same messages under another package: translate via binary.
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        const asV1 = create(v1.ServerReflectionRequestSchema, {
          host: req.host,
          messageRequest: req.messageRequest as Request['messageRequest'],
        });
        const res = answer(asV1);
        yield create(v1alpha.ServerReflectionResponseSchema, {
          validHost: res.validHost,
          originalRequest: req,
          messageResponse: res.messageResponse as v1alpha.ServerReflectionResponse['messageResponse'],
        });
      }
    },
  });
}

function respond(registry: FileIndex, services: readonly string[], req: Request): Response {
  const base = { validHost: req.host, originalRequest: req };
  const error = (code: Code, message: string): Response =>
    create(v1.ServerReflectionResponseSchema, {
      ...base,
      messageResponse: { case: 'errorResponse', value: { errorCode: code, errorMessage: message } },
    });
  const files = (file: DescFile | undefined, what: string): Response => {
    if (!file) return error(Code.NotFound, `${what} not found`);
    return create(v1.ServerReflectionResponseSchema, {
      ...base,
      messageResponse: {
        case: 'fileDescriptorResponse',
        value: {
          fileDescriptorProto: withDependencies(file).map((f) =>
            toBinary(FileDescriptorProtoSchema, f.proto),
          ),
        },
      },
    });
  };
  const m = req.messageRequest;
  switch (m.case) {
    case 'listServices':
      return create(v1.ServerReflectionResponseSchema, {
        ...base,
        messageResponse: {
          case: 'listServicesResponse',
          value: { service: services.map((name) => ({ name })) },
        },
      });
    case 'fileByFilename':
      return files(registry.getFile(m.value), `file "${m.value}"`);
    case 'fileContainingSymbol':
      return files(fileOfSymbol(registry, m.value), `symbol "${m.value}"`);
    case 'fileContainingExtension':
      return error(
        Code.NotFound,
        `extension ${m.value.extensionNumber} of "${m.value.containingType}" not found`,
      );
    case 'allExtensionNumbersOfType': {
      const type = registry.getMessage(m.value);
      if (!type) return error(Code.NotFound, `type "${m.value}" not found`);
      return create(v1.ServerReflectionResponseSchema, {
        ...base,
        messageResponse: {
          case: 'allExtensionNumbersResponse',
          value: { baseTypeName: m.value, extensionNumber: [] },
        },
      });
    }
    default:
      return error(Code.InvalidArgument, 'empty reflection request');
  }
}

/** The file declaring a symbol; methods and fields resolve through their parent. */
function fileOfSymbol(registry: FileIndex, symbol: string): DescFile | undefined {
  const desc = registry.get(symbol);
  if (desc) return desc.file;
  const dot = symbol.lastIndexOf('.');
  if (dot <= 0) return undefined;
  return registry.get(symbol.slice(0, dot))?.file;
}

/** Files by proto file name ("haystack/v1/store.proto") and symbols by full name. */
class FileIndex {
  private readonly files = new Map<string, DescFile>();
  private readonly symbols: Registry;

  constructor(roots: readonly DescFile[]) {
    for (const root of roots) for (const f of withDependencies(root)) this.files.set(f.proto.name, f);
    this.symbols = createRegistry(...this.files.values());
  }

  getFile(name: string): DescFile | undefined {
    return this.files.get(name);
  }

  get(typeName: string) {
    return this.symbols.get(typeName);
  }

  getMessage(typeName: string) {
    return this.symbols.getMessage(typeName);
  }
}

/** The file and its transitive imports, the file first (as grpcurl expects). */
function withDependencies(file: DescFile): DescFile[] {
  const seen = new Set<string>();
  const out: DescFile[] = [];
  const visit = (f: DescFile) => {
    if (seen.has(f.proto.name)) return;
    seen.add(f.proto.name);
    out.push(f);
    for (const dep of f.dependencies) visit(dep);
  };
  visit(file);
  return out;
}
