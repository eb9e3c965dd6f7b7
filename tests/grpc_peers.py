"""Real gRPC servers (grpcio) for the grpc-keyword tests.

The custom service is compiled from SHOP_PROTO by protoc (grpcio-tools), not by the executor's own
.proto reader, so a mistake in the reader shows up as a failed call. One server offers reflection,
another does not (it also listens on a Unix socket), a third speaks TLS with a certificate from a
CA made here; a plain TCP listener that never answers stands for a hung server.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from concurrent import futures
from dataclasses import dataclass, field

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # not the INFO lines of every refused handshake

import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection  # noqa: E402

SHOP_PROTO = """\
syntax = "proto3";
package demo.v1;

import "google/protobuf/empty.proto";

// An order as the shop receives it.
message Order {
  enum Size {
    SIZE_UNSPECIFIED = 0;
    SMALL = 1;
    LARGE = 2;
  }
  message Item {
    message Note { string text = 1; }
    string sku = 1;
    int32 quantity = 2;
    repeated Note notes = 3;
  }
  string id = 1;
  Size size = 2;
  repeated Item items = 3;
  map<string, int64> stock = 4;
  oneof payment {
    string card = 5;
    bool cash = 6;
  }
  optional double total = 7 [json_name = "sum"];
  reserved 8, 10 to 12;
  reserved "legacy";
}

message Receipt {
  string order_id = 1;
  Order.Size size = 2;
  int32 item_count = 3;
  repeated string skus = 4;
  string status = 5;
  Order echo = 6;
}

message Pong { string message = 1; }
message Fault { string code = 1; string detail = 2; }
message Blob { int32 size = 1; }
message Data { bytes data = 1; }

service Shop {
  rpc Place(Order) returns (Receipt);
  rpc Ping(google.protobuf.Empty) returns (Pong);
  rpc Fail(Fault) returns (Pong);        // aborts with the status named by `code`
  rpc Sleep(Blob) returns (Pong);        // answers after `size` milliseconds
  rpc Big(Blob) returns (Data);          // answers `size` bytes
  rpc Watch(Order) returns (stream Receipt);
}
"""
SHOP = "demo.v1.Shop"


def protoc_pool(text: str, name: str = "shop.proto") -> descriptor_pool.DescriptorPool:
    """`text` compiled by protoc (grpcio-tools) into a private pool."""
    import grpc_tools
    from grpc_tools import protoc

    work = tempfile.mkdtemp(prefix="pw-protoc-")
    try:
        with open(os.path.join(work, name), "w") as fh:
            fh.write(text)
        out = os.path.join(work, "set.pb")
        include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        code = protoc.main(["protoc", f"-I{work}", f"-I{include}", "--include_imports",
                            f"--descriptor_set_out={out}", name])
        if code != 0:
            raise RuntimeError(f"protoc failed with {code}")
        with open(out, "rb") as fh:
            files = descriptor_pb2.FileDescriptorSet.FromString(fh.read())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pool = descriptor_pool.DescriptorPool()
    for fdp in files.file:  # protoc lists dependencies first
        pool.Add(fdp)
    return pool


def _shop_handler(pool: descriptor_pool.DescriptorPool) -> grpc.GenericRpcHandler:
    def cls(name: str):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    Receipt, Pong, Data = cls("demo.v1.Receipt"), cls("demo.v1.Pong"), cls("demo.v1.Data")

    def place(order, context):
        return Receipt(order_id=order.id, size=order.size, item_count=sum(i.quantity for i in order.items),
                       skus=[i.sku for i in order.items], status="ACCEPTED", echo=order)

    def ping(_, context):
        return Pong(message="pong")

    def fail(fault, context):
        context.abort(grpc.StatusCode[fault.code], fault.detail)

    def sleep(blob, context):
        time.sleep(blob.size / 1000)
        return Pong(message="late")

    def big(blob, context):
        return Data(data=b"x" * blob.size)

    def watch(order, context):
        yield place(order, context)

    service = pool.FindServiceByName(SHOP)
    handlers = {}
    for method, fn in (("Place", place), ("Ping", ping), ("Fail", fail), ("Sleep", sleep), ("Big", big),
                       ("Watch", watch)):
        desc = service.methods_by_name[method]
        request, reply = (message_factory.GetMessageClass(desc.input_type),
                          message_factory.GetMessageClass(desc.output_type))
        make = grpc.unary_stream_rpc_method_handler if desc.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method] = make(fn, request_deserializer=request.FromString,
                                response_serializer=reply.SerializeToString)
    return grpc.method_handlers_generic_handler(SHOP, handlers)


def _health_servicer() -> health.HealthServicer:
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(SHOP, health_pb2.HealthCheckResponse.SERVING)
    servicer.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer.set("unsure", health_pb2.HealthCheckResponse.UNKNOWN)
    return servicer


@dataclass
class Peers:
    """Every server, started once: ports, the Unix socket, the CA file that plays "system roots"."""
    reflect_port: int = 0
    plain_port: int = 0
    tls_port: int = 0
    silent_port: int = 0
    unix_path: str = ""
    ca_file: str = ""
    ca_pem: bytes = b""
    leaf_pem: bytes = b""
    _servers: list = field(default_factory=list)
    _sockets: list = field(default_factory=list)
    _dir: str = ""

    def start(self) -> Peers:
        import trustme

        pool = protoc_pool(SHOP_PROTO)
        self._dir = tempfile.mkdtemp(prefix="pw-grpc-")
        self.unix_path = os.path.join(self._dir, "grpc.sock")

        def server(reflect: bool) -> grpc.Server:
            s = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
            s.add_generic_rpc_handlers((_shop_handler(pool),))
            health_pb2_grpc.add_HealthServicer_to_server(_health_servicer(), s)
            if reflect:
                reflection.enable_server_reflection((SHOP, reflection.SERVICE_NAME), s, pool=pool)
            self._servers.append(s)
            return s

        with_reflection = server(reflect=True)
        self.reflect_port = with_reflection.add_insecure_port("127.0.0.1:0")
        without = server(reflect=False)
        self.plain_port = without.add_insecure_port("127.0.0.1:0")
        without.add_insecure_port(f"unix:{self.unix_path}")

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_pem = ca.cert_pem.bytes()
        self.leaf_pem = leaf.cert_chain_pems[0].bytes()
        self.ca_file = os.path.join(self._dir, "ca.pem")  # the CA certificate only; its key stays in memory
        with open(self.ca_file, "wb") as fh:
            fh.write(self.ca_pem)
        tls = server(reflect=False)
        credentials = grpc.ssl_server_credentials(
            [(leaf.private_key_pem.bytes(), b"".join(p.bytes() for p in leaf.cert_chain_pems))])
        self.tls_port = tls.add_secure_port("127.0.0.1:0", credentials)
        for s in self._servers:
            s.start()

        silent = socket.socket()  # the kernel completes handshakes; nobody ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(256)
        self.silent_port = silent.getsockname()[1]
        self._sockets.append(silent)
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.stop(None)
        for sock in self._sockets:
            sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


_shared: Peers | None = None


def shared() -> Peers:
    """One set of servers for the whole test process (e.g. for `types` examples), stopped at exit."""
    global _shared
    if _shared is None:
        import atexit

        _shared = Peers().start()
        atexit.register(_shared.stop)
    return _shared
