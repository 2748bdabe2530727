#!/usr/bin/env python3
"""Probes the token authority's gRPC server with grpcio (gRPC C core), not grpc-js.

Usage: python3 grpc_probe.py HOST:PORT CLIENT_ID CLIENT_SECRET

Checks, and prints as one JSON object on stdout:
  - grpc.health.v1.Health/Check for "", "token_authority.v1.TokenAuthority" and an unknown name
    (the health protocol wants NOT_FOUND for the unknown one);
  - ListServices over grpc.reflection.v1 and grpc.reflection.v1alpha;
  - file_containing_symbol for token_authority.v1.TokenAuthority and grpc.health.v1.Health, every
    dependency fetched by file_by_filename (any depth, well-known types included), all loaded in
    dependency order into a fresh Python DescriptorPool, the way grpcurl-style tools do;
  - real calls to IssueToken and GetJwks with message classes built from those descriptors.

Needs only Debian's python3-grpcio and python3-protobuf: the health and reflection messages are
built here from hand-written FileDescriptorProtos (no grpcio-reflection, no generated code).
Problems the server has are reported as JSON fields; the exit code is non-zero only when the
probe itself cannot run (bad usage, missing module, unexpected exception).
"""

import json
import queue
import sys
import traceback

try:
    import grpc
    import google.protobuf
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.internal import api_implementation
except ImportError as exc:  # pragma: no cover - reported to the caller as a clear failure
    print(json.dumps({"fatal": f"missing Python module: {exc} (install python3-grpcio python3-protobuf)"}))
    sys.exit(3)

TIMEOUT_S = 5.0
TOKEN_AUTHORITY = "token_authority.v1.TokenAuthority"
HEALTH = "grpc.health.v1.Health"
UNKNOWN_SERVICE = "no.such.v1.Service"
UNKNOWN_SYMBOL = "no.such.v1.Symbol"
REFLECTION_VERSIONS = ("v1", "v1alpha")

FDP = descriptor_pb2.FieldDescriptorProto


# ---------------------------------------------------------------------------------------------
# Message classes from descriptors


def message_class(pool, full_name):
    """A message class for full_name in pool, with whichever API this protobuf version has."""
    descriptor = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def add_file(pool, file_proto):
    if hasattr(pool, "AddSerializedFile"):
        pool.AddSerializedFile(file_proto.SerializeToString())
    else:  # pragma: no cover - very old protobuf
        pool.Add(file_proto)


def field(name, number, ftype, type_name=None, repeated=False, oneof_index=None):
    spec = {
        "name": name,
        "number": number,
        "type": ftype,
        "label": FDP.LABEL_REPEATED if repeated else FDP.LABEL_OPTIONAL,
        "json_name": "".join(part if i == 0 else part.capitalize() for i, part in enumerate(name.split("_"))),
    }
    if type_name:
        spec["type_name"] = type_name
    if oneof_index is not None:
        spec["oneof_index"] = oneof_index
    return spec


def build_file(name, package, messages, enums_by_message=None):
    """A proto3 FileDescriptorProto from {message: ([field specs], [oneof names])}."""
    file_proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    for message_name, (fields, oneofs) in messages.items():
        message = file_proto.message_type.add(name=message_name)
        for oneof in oneofs:
            message.oneof_decl.add(name=oneof)
        for spec in fields:
            message.field.add(**spec)
        for enum_name, values in (enums_by_message or {}).get(message_name, {}).items():
            enum = message.enum_type.add(name=enum_name)
            for value_name, number in values:
                enum.value.add(name=value_name, number=number)
    return file_proto


def reflection_file(version):
    """grpc/reflection/<version>/reflection.proto; v1 and v1alpha differ only in the package."""
    pkg = f"grpc.reflection.{version}"
    t = lambda name: f".{pkg}.{name}"  # noqa: E731
    return build_file(
        f"grpc/reflection/{version}/reflection.proto",
        pkg,
        {
            "ServerReflectionRequest": (
                [
                    field("host", 1, FDP.TYPE_STRING),
                    field("file_by_filename", 3, FDP.TYPE_STRING, oneof_index=0),
                    field("file_containing_symbol", 4, FDP.TYPE_STRING, oneof_index=0),
                    field("file_containing_extension", 5, FDP.TYPE_MESSAGE, t("ExtensionRequest"), oneof_index=0),
                    field("all_extension_numbers_of_type", 6, FDP.TYPE_STRING, oneof_index=0),
                    field("list_services", 7, FDP.TYPE_STRING, oneof_index=0),
                ],
                ["message_request"],
            ),
            "ExtensionRequest": (
                [field("containing_type", 1, FDP.TYPE_STRING), field("extension_number", 2, FDP.TYPE_INT32)],
                [],
            ),
            "ServerReflectionResponse": (
                [
                    field("valid_host", 1, FDP.TYPE_STRING),
                    field("original_request", 2, FDP.TYPE_MESSAGE, t("ServerReflectionRequest")),
                    field("file_descriptor_response", 4, FDP.TYPE_MESSAGE, t("FileDescriptorResponse"), oneof_index=0),
                    field("all_extension_numbers_response", 5, FDP.TYPE_MESSAGE, t("ExtensionNumberResponse"), oneof_index=0),
                    field("list_services_response", 6, FDP.TYPE_MESSAGE, t("ListServiceResponse"), oneof_index=0),
                    field("error_response", 7, FDP.TYPE_MESSAGE, t("ErrorResponse"), oneof_index=0),
                ],
                ["message_response"],
            ),
            "FileDescriptorResponse": ([field("file_descriptor_proto", 1, FDP.TYPE_BYTES, repeated=True)], []),
            "ExtensionNumberResponse": (
                [field("base_type_name", 1, FDP.TYPE_STRING), field("extension_number", 2, FDP.TYPE_INT32, repeated=True)],
                [],
            ),
            "ListServiceResponse": ([field("service", 1, FDP.TYPE_MESSAGE, t("ServiceResponse"), repeated=True)], []),
            "ServiceResponse": ([field("name", 1, FDP.TYPE_STRING)], []),
            "ErrorResponse": ([field("error_code", 1, FDP.TYPE_INT32), field("error_message", 2, FDP.TYPE_STRING)], []),
        },
    )


def health_file():
    """The part of grpc/health/v1/health.proto that Check needs."""
    return build_file(
        "probe/grpc/health/v1/health.proto",
        "grpc.health.v1",
        {
            "HealthCheckRequest": ([field("service", 1, FDP.TYPE_STRING)], []),
            "HealthCheckResponse": (
                [field("status", 1, FDP.TYPE_ENUM, ".grpc.health.v1.HealthCheckResponse.ServingStatus")],
                [],
            ),
        },
        {"HealthCheckResponse": {"ServingStatus": [("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2), ("SERVICE_UNKNOWN", 3)]}},
    )


# The probe's own pool: the client side of health and both reflection versions.
PROBE_POOL = descriptor_pool.DescriptorPool()
for _file in (health_file(), reflection_file("v1"), reflection_file("v1alpha")):
    add_file(PROBE_POOL, _file)
HealthCheckRequest = message_class(PROBE_POOL, "grpc.health.v1.HealthCheckRequest")
HealthCheckResponse = message_class(PROBE_POOL, "grpc.health.v1.HealthCheckResponse")
REFLECTION = {
    v: (
        message_class(PROBE_POOL, f"grpc.reflection.{v}.ServerReflectionRequest"),
        message_class(PROBE_POOL, f"grpc.reflection.{v}.ServerReflectionResponse"),
    )
    for v in REFLECTION_VERSIONS
}


def rpc_error(exc):
    return {"code": exc.code().name, "details": exc.details()}


# ---------------------------------------------------------------------------------------------
# Health


def health_check(channel, service):
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    try:
        response = check(HealthCheckRequest(service=service), timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        return {"ok": False, **rpc_error(exc)}
    status = HealthCheckResponse.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number[response.status].name
    return {"ok": True, "code": "OK", "status": status}


# ---------------------------------------------------------------------------------------------
# Reflection


class ReflectionStream:
    """One ServerReflectionInfo bidi stream, asked one request at a time (as grpcurl does)."""

    def __init__(self, channel, version):
        self.version = version
        self.request_class, self.response_class = REFLECTION[version]
        self._requests = queue.Queue()
        method = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=self.response_class.FromString,
        )
        self._responses = method(iter(self._requests.get, None), timeout=TIMEOUT_S * 2)

    def ask(self, **request):
        message = self.request_class(host="", **request)
        self._requests.put(message)
        response = next(self._responses)
        kind = response.WhichOneof("message_response")
        if response.original_request != message:
            raise ProtocolError(f"{self.version}: original_request does not echo the request ({request})")
        return kind, response

    def close(self):
        self._requests.put(None)
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError:
            pass


class ProtocolError(Exception):
    pass


def list_services(channel, version):
    stream = ReflectionStream(channel, version)
    try:
        kind, response = stream.ask(list_services="*")
        if kind != "list_services_response":
            return {"ok": False, "error": f"answered {kind}: {response}"}
        result = {"ok": True, "services": sorted(s.name for s in response.list_services_response.service)}
        # An unknown symbol must be an error_response with NOT_FOUND, on the same stream.
        kind, response = stream.ask(file_containing_symbol=UNKNOWN_SYMBOL)
        result["unknown_symbol"] = (
            {"error_code": grpc.StatusCode.NOT_FOUND.name if response.error_response.error_code == 5 else response.error_response.error_code,
             "error_message": response.error_response.error_message}
            if kind == "error_response"
            else {"error": f"answered {kind}, not error_response"}
        )
        return result
    except grpc.RpcError as exc:
        return {"ok": False, **rpc_error(exc)}
    except ProtocolError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        stream.close()


def fetch_descriptor_chain(channel, version, symbol):
    """file_containing_symbol, then file_by_filename for every missing dependency, any depth.

    Returns the FileDescriptorProtos by name, the files the server sent unasked (with the ones it
    was asked for) and the requests made.
    """
    stream = ReflectionStream(channel, version)
    files = {}
    requests = []
    try:
        def take(kind, response, what):
            if kind != "file_descriptor_response":
                detail = response.error_response if kind == "error_response" else kind
                raise ProtocolError(f"{what}: answered {kind}: {str(detail).strip()}")
            for raw in response.file_descriptor_response.file_descriptor_proto:
                file_proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files.setdefault(file_proto.name, file_proto)

        requests.append({"file_containing_symbol": symbol})
        take(*stream.ask(file_containing_symbol=symbol), f"file_containing_symbol {symbol}")
        root_names = list(files)
        while True:
            missing = sorted({dep for f in files.values() for dep in f.dependency} - set(files))
            if not missing:
                break
            for name in missing:
                requests.append({"file_by_filename": name})
                take(*stream.ask(file_by_filename=name), f"file_by_filename {name}")
                if name not in files:
                    raise ProtocolError(f"file_by_filename {name}: the answer does not contain {name}")
        return files, root_names, requests
    finally:
        stream.close()


def dependency_order(files):
    order, state = [], {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ProtocolError(f"import cycle: {' -> '.join(path + [name])}")
        state[name] = "visiting"
        for dep in files[name].dependency:
            visit(dep, path + [name])
        state[name] = "done"
        order.append(name)

    for name in sorted(files):
        visit(name, [])
    return order


def descriptor_anomalies(files, order_roots):
    """What in the served descriptors differs from what protoc would produce (informational)."""
    notes = []

    def walk(file_name, scope, messages):
        for message in messages:
            full = f"{scope}.{message.name}"
            entries = {n.name for n in message.nested_type if n.options.map_entry}
            for f in message.field:
                if f.type_name.split(".")[-1] in entries and f.type_name.split(".")[-1] != _camel(f.name) + "Entry":
                    notes.append(f"{file_name}: map field {full}.{f.name} uses entry type {f.type_name!r}, protoc names it {_camel(f.name) + 'Entry'!r}")
                if f.HasField("oneof_index"):
                    oneof = message.oneof_decl[f.oneof_index].name
                    if oneof == "_" + f.name and not f.proto3_optional:
                        notes.append(f"{file_name}: {full}.{f.name} is in synthetic oneof {oneof!r} without proto3_optional")
            walk(file_name, full, message.nested_type)

    for name, f in files.items():
        walk(name, f.package, f.message_type)
    declared = set(order_roots)
    pending = list(order_roots)
    while pending:
        for dep in files[pending.pop()].dependency:
            if dep not in declared:
                declared.add(dep)
                pending.append(dep)
    for name in sorted(set(files) - declared):
        notes.append(f"{name} was sent with the symbol's file but is not among its (transitive) dependencies")
    return notes


def _camel(name):
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def load_symbol(channel, version, symbol):
    """Fetches and loads symbol's file and all its imports into a fresh pool."""
    result = {"ok": False, "symbol": symbol, "version": version}
    try:
        files, roots, requests = fetch_descriptor_chain(channel, version, symbol)
        result["files_sent_for_symbol"] = roots
        result["requests"] = len(requests)
        order = dependency_order(files)
        result["load_order"] = order
        result["files"] = {
            name: {"package": f.package, "syntax": f.syntax or "proto2", "dependency": list(f.dependency)}
            for name, f in files.items()
        }
        result["anomalies"] = descriptor_anomalies(files, roots[:1])
        pool = descriptor_pool.DescriptorPool()
        for name in order:
            try:
                add_file(pool, files[name])
            except Exception as exc:  # the pool refuses the file: report which and why
                result["error"] = f"{name} does not load in Python protobuf: {type(exc).__name__}: {exc}"
                return result, None
        service = pool.FindServiceByName(symbol)
        result["methods"] = [
            {"name": m.name, "input": m.input_type.full_name, "output": m.output_type.full_name,
             "client_streaming": getattr(m, "client_streaming", None), "server_streaming": getattr(m, "server_streaming", None)}
            for m in service.methods
        ]
        result["ok"] = True
        return result, pool
    except grpc.RpcError as exc:
        result.update(rpc_error(exc))
    except ProtocolError as exc:
        result["error"] = str(exc)
    except KeyError as exc:
        result["error"] = f"not in the loaded descriptors: {exc}"
    return result, None


# ---------------------------------------------------------------------------------------------
# Dynamic calls


def dynamic_call(channel, pool, service, method_name, fill):
    method = pool.FindServiceByName(service).methods_by_name[method_name]
    request_class = message_class(pool, method.input_type.full_name)
    response_class = message_class(pool, method.output_type.full_name)
    call = channel.unary_unary(
        f"/{service}/{method_name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    request = request_class()
    fill(request)
    return call(request, timeout=TIMEOUT_S)


def issue_token(channel, pool, client_id, client_secret):
    def fill(request):
        request.grant_type = "client_credentials"
        request.client.client_id = client_id
        request.client.client_secret = client_secret

    try:
        response = dynamic_call(channel, pool, TOKEN_AUTHORITY, "IssueToken", fill)
    except grpc.RpcError as exc:
        return {"ok": False, **rpc_error(exc)}
    return {
        "ok": True,
        "token_type": response.token_type,
        "expires_in": int(response.expires_in),
        "scope": response.scope,
        "access_token_segments": len(response.access_token.split(".")) if response.access_token else 0,
    }


def get_jwks(channel, pool):
    try:
        response = dynamic_call(channel, pool, TOKEN_AUTHORITY, "GetJwks", lambda request: None)
    except grpc.RpcError as exc:
        return {"ok": False, **rpc_error(exc)}
    keys = [{"kty": k.kty, "alg": k.alg, "kid": k.kid, "use": k.use} for k in response.keys]
    return {"ok": True, "count": len(keys), "keys": keys}


# ---------------------------------------------------------------------------------------------


def main(argv):
    if len(argv) != 4:
        print(json.dumps({"fatal": "usage: grpc_probe.py HOST:PORT CLIENT_ID CLIENT_SECRET"}))
        return 2
    target, client_id, client_secret = argv[1:]
    report = {
        "runtime": {
            "python": sys.version.split()[0],
            "grpc": grpc.__version__,
            "protobuf": google.protobuf.__version__,
            "protobuf_implementation": api_implementation.Type(),
        },
        "target": target,
    }
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
        except grpc.FutureTimeoutError:
            report["fatal"] = f"cannot connect to {target}"
            print(json.dumps(report, indent=2))
            return 1

        report["health"] = {name: health_check(channel, name) for name in ("", TOKEN_AUTHORITY)}
        report["health_unknown"] = {"service": UNKNOWN_SERVICE, **health_check(channel, UNKNOWN_SERVICE)}
        report["reflection"] = {
            f"grpc.reflection.{v}.ServerReflection": list_services(channel, v) for v in REFLECTION_VERSIONS
        }

        report["descriptors"] = {}
        pools = {}
        for version in REFLECTION_VERSIONS:
            for symbol in (TOKEN_AUTHORITY, HEALTH):
                result, pool = load_symbol(channel, version, symbol)
                report["descriptors"].setdefault(version, {})[symbol] = result
                if pool is not None:
                    pools.setdefault(symbol, pool)

        pool = pools.get(TOKEN_AUTHORITY)
        if pool is None:
            report["issue_token"] = report["get_jwks"] = {"ok": False, "error": "descriptors not loaded"}
        else:
            report["issue_token"] = issue_token(channel, pool, client_id, client_secret)
            report["get_jwks"] = get_jwks(channel, pool)

    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as exc:  # unexpected: say what, exit non-zero
        print(json.dumps({"fatal": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}))
        sys.exit(1)
