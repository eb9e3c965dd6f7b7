"""Descriptors for calling gRPC methods whose types are known only at run time: from a monitor's
`grpcProtobuf` text, from the FileDescriptorProtos a server's reflection sends, and the health and
reflection messages the client itself speaks. Each set lives in a private DescriptorPool, so a
server in the same process (as in tests) may register its own copies in protobuf's default pool.

The text is parsed by proto-schema-parser (Buf's ANTLR grammar, pure Python); this module turns its
syntax tree into a FileDescriptorProto the way protoc does (map entry messages, synthetic oneofs for
proto3 `optional`, enum aliases) and loads it into a private DescriptorPool together with the
well-known `google/protobuf/*.proto` files it imports, which protobuf itself ships. Type names are
left relative: the pool resolves them with protoc's scoping rules.

Parsing costs ~20 ms for a typical file and ~25 ms per KiB beyond it, so callers run `load` off the
event loop and cache its result.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

from executors._kit import limits as _limits

MAX_PROTO_BYTES = 256 * 1024  # ~6 s of parsing; real service definitions are far smaller
FILE_NAME = "grpcProtobuf.proto"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int64": _F.TYPE_INT64, "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32, "fixed64": _F.TYPE_FIXED64, "fixed32": _F.TYPE_FIXED32, "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "uint32": _F.TYPE_UINT32, "sfixed32": _F.TYPE_SFIXED32,
    "sfixed64": _F.TYPE_SFIXED64, "sint32": _F.TYPE_SINT32, "sint64": _F.TYPE_SINT64,
}
_WELL_KNOWN = frozenset(f"google/protobuf/{name}.proto" for name in (
    "any", "api", "duration", "empty", "field_mask", "source_context", "struct", "timestamp", "type", "wrappers",
    "descriptor"))


class ProtoError(ValueError):
    """The text is not a .proto file this reader can load; str() says where and why."""


@dataclass(frozen=True, slots=True)
class Schema:
    pool: descriptor_pool.DescriptorPool
    file: Any  # FileDescriptor of the text
    package: str


def package_of(text: str) -> str:
    """The `package` statement's name without parsing the whole file ("" when there is none)."""
    match = _PACKAGE.search(_COMMENTS.sub(lambda m: '""' if m.group(1) else " ", text))  # no comments, no strings
    return match.group(1) if match else ""


_COMMENTS = re.compile(r'("(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\')|//[^\n]*|/\*.*?\*/', re.DOTALL)
_PACKAGE = re.compile(r"(?:^|[;}\s])package\s+([A-Za-z_][\w.]*)\s*;")


def is_well_known(name: str) -> bool:
    return name in _WELL_KNOWN


def add_well_known(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    """Add a well-known file (and what it imports) to `pool`; False when `name` is not one."""
    module = _well_known_modules().get(name)
    if module is None:
        return False
    try:
        pool.FindFileByName(name)
        return True
    except KeyError:
        pass
    for dependency in module.DESCRIPTOR.dependencies:
        add_well_known(pool, dependency.name)
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    return True


def _well_known_modules() -> dict[str, Any]:
    # Plain import statements (not importlib), so the one-file binary's bundler sees and includes them.
    from google.protobuf import (any_pb2, api_pb2, duration_pb2, empty_pb2, field_mask_pb2, source_context_pb2,
                                 struct_pb2, timestamp_pb2, type_pb2, wrappers_pb2)

    modules = (any_pb2, api_pb2, duration_pb2, empty_pb2, field_mask_pb2, source_context_pb2, struct_pb2,
               timestamp_pb2, type_pb2, wrappers_pb2, descriptor_pb2)
    return {module.DESCRIPTOR.name: module for module in modules}


def load(text: str) -> Schema:
    """Parse `text` and load it into a new private pool; ProtoError on any failure."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PROTO_BYTES:
        raise ProtoError(f"the text is larger than {MAX_PROTO_BYTES // 1024} KiB")
    tree = _parse(text)
    if tree.edition:
        raise ProtoError(f'edition "{tree.edition}" files are not supported; use syntax = "proto3"')
    syntax = (tree.syntax or "proto2").strip("'\"")
    if syntax not in ("proto2", "proto3"):
        raise ProtoError(f'unknown syntax "{syntax}"')
    pool = descriptor_pool.DescriptorPool()
    fdp = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, syntax=syntax)
    missing: list[str] = []
    try:
        _build_file(tree, fdp, pool, missing)
    except ProtoError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:  # a tree shape the grammar allows but protobuf does not
        raise ProtoError(str(exc)) from None
    try:
        pool.Add(fdp)
        file = pool.FindFileByName(FILE_NAME)
    except Exception as exc:  # TypeError from upb, KeyError/ValueError elsewhere: all say what is wrong
        detail = str(exc).removeprefix("Couldn't build proto file into descriptor pool: ")
        if missing:
            detail += f" (only google/protobuf/*.proto imports are available, not {', '.join(missing)})"
        raise ProtoError(detail) from None
    return Schema(pool, file, fdp.package)


_loaded = _limits.BoundedCache(max_bytes=32 << 20, max_entries=64)  # text digest -> Schema or ProtoError
_loading: dict[str, asyncio.Future] = {}


async def load_once(text: str) -> Schema:
    """`load(text)` in a worker thread, once per distinct text however many checks ask at the same time;
    the result (a ProtoError too) is kept for the next checks."""
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    hit = _loaded.get(key)
    if hit is None:
        loop = asyncio.get_running_loop()
        future = _loading.get(key)
        if future is None or future.get_loop() is not loop:
            future = _loading[key] = loop.run_in_executor(None, _load_or_error, text)

            def keep(done: asyncio.Future, key: str = key, size: int = len(text)) -> None:
                _loading.pop(key, None)
                if not done.cancelled():
                    _loaded.put(key, done.result(), 40 * size + (256 << 10))
            future.add_done_callback(keep)
        hit = await asyncio.shield(future)  # a check that times out leaves the parse to finish for the next
    if isinstance(hit, ProtoError):
        raise hit
    return hit


def _load_or_error(text: str) -> Schema | ProtoError:
    try:
        return load(text)
    except ProtoError as exc:
        return exc
    except Exception as exc:  # whatever else the parser or protobuf raise: still this text's answer
        return ProtoError(f"cannot read the text: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------------
# Parsing

def _parse(text: str) -> Any:
    # Imported here: the grammar costs ~5 MB of memory and ~0.1 s, paid only by monitors that need it
    # (and `load` runs off the event loop).
    from antlr4.error.ErrorListener import ErrorListener
    from proto_schema_parser.parser import Parser

    class Raising(ErrorListener):
        def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:
            if len(msg) > 120 and " expecting " in msg:  # ANTLR lists every token it would have taken
                msg = msg[:msg.index(" expecting ")]
            raise ProtoError(f"line {line}:{column + 1}: {msg}")

    def quiet(recognizer: Any) -> None:
        recognizer.removeErrorListeners()  # the default one prints to stderr and carries on
        recognizer.addErrorListener(Raising())

    try:
        return Parser(setup_lexer=quiet, setup_parser=quiet).parse(text)
    except ProtoError:
        raise
    except RecursionError:
        raise ProtoError("nested too deeply") from None
    except Exception as exc:  # the tree builder's int() of a malformed number, and the like
        raise ProtoError(f"cannot read the text: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Syntax tree -> FileDescriptorProto

def _build_file(tree: Any, fdp: Any, pool: Any, missing: list[str]) -> None:
    from proto_schema_parser import ast

    proto3 = fdp.syntax == "proto3"
    for element in tree.file_elements:
        if isinstance(element, ast.Package):
            fdp.package = element.name
        elif isinstance(element, ast.Import):
            if add_well_known(pool, element.name):
                fdp.dependency.append(element.name)
            else:
                missing.append(f'"{element.name}"')
        elif isinstance(element, ast.Message):
            _message(element, fdp.message_type.add(), proto3)
        elif isinstance(element, ast.Enum):
            _enum(element, fdp.enum_type.add())
        elif isinstance(element, ast.Service):
            _service(element, fdp.service.add())
        # options, extensions (`extend`) and comments do not change how messages are encoded


def _message(node: Any, out: Any, proto3: bool) -> None:
    from proto_schema_parser import ast

    out.name = node.name
    optional_proto3: list[Any] = []
    for element in node.elements:
        if isinstance(element, ast.Field):
            field = _field(element, out, proto3)
            if proto3 and element.cardinality == ast.FieldCardinality.OPTIONAL:
                optional_proto3.append(field)
        elif isinstance(element, ast.MapField):
            _map_field(element, out)
        elif isinstance(element, ast.OneOf):
            index = len(out.oneof_decl)
            out.oneof_decl.add(name=element.name)
            for member in element.elements:
                if isinstance(member, ast.Group):
                    raise ProtoError(f"group {member.name}: groups are not supported")
                if isinstance(member, ast.Field):
                    _field(member, out, proto3).oneof_index = index
        elif isinstance(element, ast.Message):
            _message(element, out.nested_type.add(), proto3)
        elif isinstance(element, ast.Enum):
            _enum(element, out.enum_type.add())
        elif isinstance(element, ast.Group):
            raise ProtoError(f"group {element.name}: groups are not supported")
        elif isinstance(element, ast.Reserved):
            out.reserved_name.extend(name.strip("'\"") for name in element.names)
    taken = {field.name for field in out.field} | {oneof.name for oneof in out.oneof_decl}
    for field in optional_proto3:  # protoc puts synthetic oneofs after the real ones, named like this
        name = field.name if field.name.startswith("_") else "_" + field.name
        while name in taken:
            name = "X" + name
        taken.add(name)
        field.oneof_index = len(out.oneof_decl)
        out.oneof_decl.add(name=name)


def _field(node: Any, message: Any, proto3: bool) -> Any:
    from proto_schema_parser import ast

    field = message.field.add(name=node.name, number=node.number)
    cardinality = node.cardinality
    field.label = (_F.LABEL_REPEATED if cardinality == ast.FieldCardinality.REPEATED else
                   _F.LABEL_REQUIRED if cardinality == ast.FieldCardinality.REQUIRED else _F.LABEL_OPTIONAL)
    if proto3 and cardinality == ast.FieldCardinality.OPTIONAL:
        field.proto3_optional = True
    _set_type(field, node.type)
    for option in node.options:
        if option.name == "json_name" and isinstance(option.value, str):
            field.json_name = option.value
        elif option.name == "packed" and isinstance(option.value, bool):
            field.options.packed = option.value
        elif option.name == "default" and not proto3:
            value = option.value
            field.default_value = (value.name if isinstance(value, ast.Identifier) else
                                   ("true" if value else "false") if isinstance(value, bool) else str(value))
    return field


def _set_type(field: Any, type_name: str) -> None:
    scalar = _SCALARS.get(type_name)
    if scalar is not None:
        field.type = scalar
    else:  # a message or an enum: the pool finds out which when it resolves the name
        field.type_name = type_name


def _map_field(node: Any, message: Any) -> None:
    entry_name = "".join(part[:1].upper() + part[1:] for part in node.name.split("_")) + "Entry"
    entry = message.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    key = entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL)
    _set_type(key, node.key_type)
    value = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL)
    _set_type(value, node.value_type)
    field = message.field.add(name=node.name, number=node.number, label=_F.LABEL_REPEATED, type_name=entry_name)
    for option in node.options:
        if option.name == "json_name" and isinstance(option.value, str):
            field.json_name = option.value


def _enum(node: Any, out: Any) -> None:
    from proto_schema_parser import ast

    out.name = node.name
    for element in node.elements:
        if isinstance(element, ast.EnumValue):
            out.value.add(name=element.name, number=element.number)
        elif isinstance(element, ast.Option) and element.name == "allow_alias" and element.value is True:
            out.options.allow_alias = True
        elif isinstance(element, ast.EnumReserved):
            out.reserved_name.extend(name.strip("'\"") for name in element.names)


def _service(node: Any, out: Any) -> None:
    from proto_schema_parser import ast

    out.name = node.name
    for element in node.elements:
        if isinstance(element, ast.Method):
            out.method.add(name=element.name, input_type=element.input_type.type,
                           output_type=element.output_type.type, client_streaming=element.input_type.stream,
                           server_streaming=element.output_type.stream)


# --------------------------------------------------------------------------------------------------
# Reflection's files, and the client's own messages

def pool_from_files(files: dict[str, bytes]) -> descriptor_pool.DescriptorPool:
    """A pool of serialized FileDescriptorProtos (each after what it imports); ValueError/TypeError when
    they do not load."""
    pool = descriptor_pool.DescriptorPool()
    protos = {name: descriptor_pb2.FileDescriptorProto.FromString(blob) for name, blob in files.items()}
    added: set[str] = set()

    def add(name: str, depth: int = 0) -> None:
        if name in added or depth > 64:
            return
        added.add(name)
        if name not in protos:
            if not add_well_known(pool, name):
                raise ValueError(f"{name} was not sent")
            return
        for dependency in protos[name].dependency:
            add(dependency, depth + 1)
        pool.Add(protos[name])

    for name in protos:
        add(name)
    return pool


def client_pool(health_package: str, reflection_services: tuple[str, ...]) -> descriptor_pool.DescriptorPool:
    """grpc.health.v1's Check messages and server reflection's messages (v1alpha and v1 are the same),
    with only the fields the client uses."""
    pool = descriptor_pool.DescriptorPool()

    def message(fdp: Any, name: str, *fields: tuple) -> None:
        out = fdp.message_type.add(name=name)
        for field_name, number, kind, *flags in fields:
            field = out.field.add(name=field_name, number=number,
                                  label=_F.LABEL_REPEATED if "repeated" in flags else _F.LABEL_OPTIONAL)
            _set_type(field, kind)
            if "oneof" in flags:  # reflection.proto has one oneof per message
                if not out.oneof_decl:
                    out.oneof_decl.add(name="message_request" if name.endswith("Request") else "message_response")
                field.oneof_index = 0

    health = descriptor_pb2.FileDescriptorProto(name="grpc/health/v1/health.proto", package=health_package,
                                                syntax="proto3")
    message(health, "HealthCheckRequest", ("service", 1, "string"))
    enum = health.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        enum.value.add(name=name, number=number)
    message(health, "HealthCheckResponse", ("status", 1, "ServingStatus"))
    pool.Add(health)
    for service in reflection_services:
        package = service.rsplit(".", 1)[0]
        fdp = descriptor_pb2.FileDescriptorProto(name=package.replace(".", "/") + "/reflection.proto",
                                                 package=package, syntax="proto3")
        message(fdp, "ServerReflectionRequest", ("host", 1, "string"), ("file_by_filename", 3, "string", "oneof"),
                ("file_containing_symbol", 4, "string", "oneof"), ("list_services", 7, "string", "oneof"))
        message(fdp, "FileDescriptorResponse", ("file_descriptor_proto", 1, "bytes", "repeated"))
        message(fdp, "ServiceResponse", ("name", 1, "string"))
        message(fdp, "ListServiceResponse", ("service", 1, "ServiceResponse", "repeated"))
        message(fdp, "ErrorResponse", ("error_code", 1, "int32"), ("error_message", 2, "string"))
        message(fdp, "ServerReflectionResponse", ("valid_host", 1, "string"),
                ("file_descriptor_response", 4, "FileDescriptorResponse", "oneof"),
                ("list_services_response", 6, "ListServiceResponse", "oneof"),
                ("error_response", 7, "ErrorResponse", "oneof"))
        pool.Add(fdp)
    return pool
