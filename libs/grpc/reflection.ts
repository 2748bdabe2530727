import { loadPackageDefinition, status as GrpcStatus, type Server, type ServerDuplexStream, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Reader, Root, type Type } from 'protobufjs';

/**
 * gRPC server reflection (v1 and v1alpha) served from FileDescriptorSets that a real protobuf
 * compiler built (`buf build`, see the `build` script), byte for byte. @grpc/reflection rebuilds
 * descriptors with protobufjs, which renames map entry types, merges files per package and drops
 * imports: other runtimes (Python's protobuf, grpcurl) then cannot load what it serves.
 */

interface IndexedFile {
  name: string;
  bytes: Buffer;
  dependencies: string[];
}

const descriptorRoot = Root.fromJSON(require('protobufjs/google/protobuf/descriptor.json'));
const FileDescriptorProtoType = descriptorRoot.lookupType('google.protobuf.FileDescriptorProto') as Type;

interface DescriptorLike {
  name?: string;
  package?: string;
  dependency?: string[];
  messageType?: MessageLike[];
  enumType?: { name: string }[];
  service?: { name: string; method?: { name: string }[] }[];
  extension?: { extendee?: string; number?: number }[];
}
interface MessageLike {
  name: string;
  nestedType?: MessageLike[];
  enumType?: { name: string }[];
  extension?: { extendee?: string; number?: number }[];
}

/** The raw FileDescriptorProto bytes of a FileDescriptorSet (field 1, repeated), untouched. */
function splitDescriptorSet(set: Buffer): Buffer[] {
  const reader = Reader.create(set);
  const files: Buffer[] = [];
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1 && (tag & 7) === 2) files.push(Buffer.from(reader.bytes()));
    else reader.skipType(tag & 7);
  }
  return files;
}

export class DescriptorIndex {
  private readonly files = new Map<string, IndexedFile>();
  private readonly fileBySymbol = new Map<string, string>();
  private readonly extensions = new Map<string, Map<number, string>>();
  readonly services: string[] = [];

  constructor(descriptorSetPaths: string[]) {
    for (const setPath of descriptorSetPaths) {
      for (const bytes of splitDescriptorSet(readFileSync(setPath))) this.add(bytes);
    }
  }

  private add(bytes: Buffer): void {
    const file = FileDescriptorProtoType.toObject(FileDescriptorProtoType.decode(bytes), { arrays: true }) as DescriptorLike;
    const name = file.name ?? '';
    if (this.files.has(name)) return;
    this.files.set(name, { name, bytes, dependencies: file.dependency ?? [] });
    const prefix = file.package ? `${file.package}.` : '';
    const addExtensions = (extensions: DescriptorLike['extension']) => {
      for (const extension of extensions ?? []) {
        const extendee = (extension.extendee ?? '').replace(/^\./, '');
        if (!this.extensions.has(extendee)) this.extensions.set(extendee, new Map());
        this.extensions.get(extendee)!.set(extension.number ?? 0, name);
      }
    };
    const addMessage = (message: MessageLike, scope: string) => {
      const fullName = `${scope}${message.name}`;
      this.fileBySymbol.set(fullName, name);
      for (const nested of message.nestedType ?? []) addMessage(nested, `${fullName}.`);
      for (const enumType of message.enumType ?? []) this.fileBySymbol.set(`${fullName}.${enumType.name}`, name);
      addExtensions(message.extension);
    };
    for (const message of file.messageType ?? []) addMessage(message, prefix);
    for (const enumType of file.enumType ?? []) this.fileBySymbol.set(`${prefix}${enumType.name}`, name);
    for (const service of file.service ?? []) {
      const serviceName = `${prefix}${service.name}`;
      this.services.push(serviceName);
      this.fileBySymbol.set(serviceName, name);
      for (const method of service.method ?? []) this.fileBySymbol.set(`${serviceName}.${method.name}`, name);
    }
    addExtensions(file.extension);
  }

  /** A file and everything it imports, each once, the file first. */
  withDependencies(fileName: string, alreadySent: Set<string>): Buffer[] | undefined {
    if (!this.files.has(fileName)) return undefined;
    const out: Buffer[] = [];
    const visit = (name: string) => {
      const file = this.files.get(name);
      if (!file || alreadySent.has(name)) return;
      alreadySent.add(name);
      out.push(file.bytes);
      file.dependencies.forEach(visit);
    };
    visit(fileName);
    return out;
  }

  fileOfSymbol(symbol: string): string | undefined {
    return this.fileBySymbol.get(symbol.replace(/^\./, ''));
  }

  fileOfExtension(type: string, number: number): string | undefined {
    return this.extensions.get(type)?.get(number);
  }

  extensionNumbers(type: string): number[] | undefined {
    const numbers = this.extensions.get(type);
    if (numbers) return [...numbers.keys()];
    return this.fileBySymbol.has(type) ? [] : undefined;
  }
}

const REFLECTION_PROTO_ROOT = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto');

interface ReflectionRequest {
  host?: string;
  file_by_filename?: string;
  file_containing_symbol?: string;
  file_containing_extension?: { containing_type: string; extension_number: number };
  all_extension_numbers_of_type?: string;
  list_services?: string;
}

/** Adds grpc.reflection.v1 and v1alpha ServerReflection to a grpc-js server. */
export function addReflection(server: Server, index: DescriptorIndex): void {
  const versions = ['v1', 'v1alpha'];
  const reflectionServices = versions.map((version) => `grpc.reflection.${version}.ServerReflection`);
  const services = [...new Set([...index.services, ...reflectionServices])].sort();
  for (const version of versions) {
    const definition = loadSync(`grpc/reflection/${version}/reflection.proto`, {
      keepCase: true,
      longs: Number,
      enums: String,
      oneofs: true,
      includeDirs: [REFLECTION_PROTO_ROOT],
    });
    // biome-ignore lint/suspicious/noExplicitAny: a package loaded from .proto at run time has no static type
    const loaded = loadPackageDefinition(definition) as any;
    const service: ServiceDefinition = loaded.grpc.reflection[version].ServerReflection.service;
    server.addService(service, {
      ServerReflectionInfo(call: ServerDuplexStream<ReflectionRequest, unknown>) {
        // Per stream, like the reference implementation: each file is sent once.
        const sent = new Set<string>();
        call.on('data', (request: ReflectionRequest) =>
          call.write({ valid_host: request.host ?? '', original_request: request, ...answer(request, sent) }),
        );
        call.on('end', () => call.end());
        call.on('error', () => call.end());
      },
    });
  }

  function answer(request: ReflectionRequest, sent: Set<string>): Record<string, unknown> {
    const notFound = (message: string) => ({ error_response: { error_code: GrpcStatus.NOT_FOUND, error_message: message } });
    const files = (fileName: string | undefined, what: string) => {
      const descriptors = fileName === undefined ? undefined : index.withDependencies(fileName, sent);
      return descriptors ? { file_descriptor_response: { file_descriptor_proto: descriptors } } : notFound(`${what} not found`);
    };
    if (request.list_services !== undefined) return { list_services_response: { service: services.map((name) => ({ name })) } };
    if (request.file_by_filename !== undefined) return files(request.file_by_filename, `file ${request.file_by_filename}`);
    if (request.file_containing_symbol !== undefined)
      return files(index.fileOfSymbol(request.file_containing_symbol), `symbol ${request.file_containing_symbol}`);
    if (request.file_containing_extension !== undefined) {
      const { containing_type, extension_number } = request.file_containing_extension;
      return files(index.fileOfExtension(containing_type, extension_number), `extension ${extension_number} of ${containing_type}`);
    }
    if (request.all_extension_numbers_of_type !== undefined) {
      const numbers = index.extensionNumbers(request.all_extension_numbers_of_type);
      return numbers
        ? { all_extension_numbers_response: { base_type_name: request.all_extension_numbers_of_type, extension_number: numbers } }
        : notFound(`type ${request.all_extension_numbers_of_type} not found`);
    }
    return { error_response: { error_code: GrpcStatus.INVALID_ARGUMENT, error_message: 'empty reflection request' } };
  }
}
