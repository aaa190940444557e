"""HAProxy's configuration for mesh's data plane, rendered from settings. No I/O.

The gRPC front door decides per request, in HAProxy's rules, with no Python:

1. The model: the mm-model-id header; else the mm-vmodel-id header through the vmodels map; else, for
   ModelInfer and ModelMetadata, field 1 of the body (`ungrpc`), itself through the vmodels map when it names one.
2. Its copies: a body naming the model itself looks in `by_name` (every copy); anything else in `by_header`
   (copies on runtimes that read the mm-model-id header, which the engine sets to the model id).
3. One copy: the map's value is one backend, or several joined by ',' (a Lua fetch picks one at random).
4. With a copy, the request is counted in two stick tables (per model: requests, in flight and last use for the
   cluster's LRU; per copy: in flight, for draining before an unload) and sent to the copy's backend. Without
   one, it goes to mesh's own gRPC door, which loads the model and forwards as on the Python path.

Each runtime instance is a backend (`rt_N`, one of a fixed number of slots) with one server, declared here with a
placeholder address and pointed at the instance's IP and port over the runtime API (`set server ... addr`) as
instances come and go. Servers added at run time (`add server`) would need no slots, but HAProxy 2.6 does not
multiplex requests over its h2 connections to them (a connection per concurrent request, measured: a third less
throughput), and neither kind can be pointed at a unix socket at run time: instances on unix sockets are served
through mesh. Each backend also has mesh's door as a backup server, so a copy whose runtime went down is served
through mesh. REST goes to mesh's REST door (JSON needs the codec).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mesh.proxy.dataplane import INFERENCE_SERVICE, MODEL_INFER, MODEL_METADATA

# Answered by mesh itself whatever the request names (a model is ready when it is servable, loaded or not).
MESH_ANSWERS = tuple(f"/{INFERENCE_SERVICE}/{m}" for m in ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady"))
BACKEND_PREFIX = "rt_"
USAGE_TABLE = "usage"
COPIES_TABLE = "copies"
STICK_KEY_BYTES = 256
"""Stick-table keys: model ids (engine-safe ids are at most 200 bytes) and model@backend."""


@dataclass(frozen=True)
class EngineFiles:
    """Where the engine's files live (one directory per engine)."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def master_socket(self) -> Path:
        """A sidecar engine's master CLI (haproxy -W -S PATH): where mesh asks it to reload."""
        return self.directory / "master.sock"

    @property
    def access_socket(self) -> Path:
        """Where the engine sends one line per request it routed itself (the access log), as datagrams."""
        return self.directory / "access.sock"

    @property
    def lua(self) -> Path:
        return self.directory / "mesh.lua"

    def map(self, name: str) -> Path:
        return self.directory / f"{name}.map"

    @property
    def certificate(self) -> Path:
        """The front doors' certificate chain and key, in one PEM (what HAProxy's `crt` reads)."""
        return self.directory / "front-door.pem"

    @property
    def client_ca(self) -> Path:
        return self.directory / "client-ca.pem"


MAPS = ("by_name", "by_header", "vmodels")


@dataclass(frozen=True)
class Listener:
    """Where a front door listens: an inherited socket (fd) or an address."""

    fd: int | None = None
    address: str = ""

    def bind(self) -> str:
        return f"fd@{self.fd}" if self.fd is not None else self.address


def tls_options(files: EngineFiles, tls: bool, mutual: bool, alpn: str) -> str:
    """The bind line's TLS options: the certificate, ALPN, and with mTLS the client CA every client must chain to."""
    if not tls:
        return ""
    options = f" ssl crt {files.certificate} alpn {alpn}"
    return options + (f" ca-file {files.client_ca} verify required" if mutual else "")


@dataclass(frozen=True)
class HAProxyLayout:
    files: EngineFiles
    grpc: Listener
    rest: Listener | None
    mesh_grpc: str
    """mesh's own gRPC door (HOST:PORT), where misses go."""
    mesh_rest: str | None
    tls: bool = False
    """Serve both front doors over TLS (the files are EngineFiles.certificate and, with mtls, .client_ca)."""
    mtls: bool = False
    slots: int = 64
    threads: int = 1
    max_message_bytes: int = 64 * 1024 * 1024
    """The largest gRPC request message the engine forwards (Settings.max_message_bytes)."""
    timeout_s: float = 3600.0
    """Client and server inactivity limits: gRPC connections stay open, and a model may think for long."""
    shared: bool = False
    """The engine runs in another container (a sidecar) under its own user: its runtime-API socket is opened to
    every user of the directory (an emptyDir only the pod's containers see)."""
    access_log: bool = False
    """One line per request the engine routed to a runtime itself, sent to `files.access_socket` (engine/access.py
    writes them as mesh's access log lines); requests it hands to mesh are in mesh's own access log."""
    latency: bool = True
    """Time each request a runtime answered through the engine, per model (Lua; `mesh latency` reads it)."""
    generation: str = "mesh"
    """The config's token (HAProxy's `description`, read back by `show info`): which config a worker serves."""
    servers: tuple[tuple[int, str], ...] = ()
    """(slot, IP:PORT) of the instances known when the config is written (a restart); other slots wait, in
    maintenance, with a placeholder address."""


LATENCY_BOUNDS_US = (500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
                     5_000_000, 10_000_000, 30_000_000, 60_000_000)  # fmt: skip
"""The engine's latency buckets: the request histogram's (metrics.REQUEST_MS_BUCKETS), in µs."""

MESH_LUA = """\
-- One copy out of several: txn.copies holds backends joined by ','.
core.register_fetches("mesh_pick", function(txn)
  local copies = {}
  for backend in string.gmatch(txn:get_var("txn.copies"), "[^,]+") do
    copies[#copies + 1] = backend
  end
  return copies[math.random(#copies)]
end)

-- Field 1 (the model's name) of a gRPC request whose message is larger than what the engine buffers: ungrpc
-- reads whole messages only, but protobuf writes fields in number order, so the name is in the first bytes.
-- Nothing (mesh's door decides) when the buffered bytes do not hold it whole.
core.register_fetches("mesh_body_model", function(txn)
  local body = txn.f:req_body()
  if body == nil then return nil end
  local pos, size = 6, #body  -- after the 5-byte gRPC prefix
  local function varint()
    local result, shift = 0, 0
    while pos <= size and shift < 64 do
      local byte = body:byte(pos)
      pos = pos + 1
      result = result | ((byte & 0x7f) << shift)
      if byte < 0x80 then return result end
      shift = shift + 7
    end
    return nil
  end
  while pos <= size do
    local tag = varint()
    if tag == nil then return nil end
    local field, wire = tag >> 3, tag & 7
    if wire == 2 then
      local length = varint()
      if length == nil or pos + length - 1 > size then return nil end
      if field == 1 then return body:sub(pos, pos + length - 1) end
      pos = pos + length
    elseif wire == 0 then
      if varint() == nil then return nil end
    elseif wire == 1 then
      pos = pos + 8
    elseif wire == 5 then
      pos = pos + 4
    else
      return nil
    end
  end
  return nil
end)

-- The latency of the requests a runtime answered through the engine, per model, path and gRPC status: a count
-- per bucket (bounds in µs; the last counts the rest) and the sum in µs, cumulative; read by `mesh latency`.
local BOUNDS_US = {LATENCY_BOUNDS_US}
local latency = {}

core.register_action("mesh_observe", {"http-res"}, function(txn)
  local arrived = txn:get_var("txn.arrived_us")
  local model = txn:get_var("txn.model")
  if arrived == nil or model == nil or txn.sf:srv_name() ~= "rt" then return end
  local now = core.now()
  local elapsed = now.sec * 1000000 + now.usec - arrived
  if elapsed < 0 then elapsed = 0 end
  local code = txn.sf:res_hdr("grpc-status")
  if code == nil or code == "" then
    code = (tonumber(txn.sf:status()) == 200) and "0" or "14"  -- OK's status comes in trailers
  end
  local key = model .. " " .. (txn:get_var("txn.path") or "-") .. " " .. code
  local entry = latency[key]
  if entry == nil then
    entry = {count = 0, sum = 0, buckets = {}}
    for i = 1, #BOUNDS_US + 1 do entry.buckets[i] = 0 end
    latency[key] = entry
  end
  local bucket = #BOUNDS_US + 1
  for i, bound in ipairs(BOUNDS_US) do
    if elapsed <= bound then bucket = i; break end
  end
  entry.count = entry.count + 1
  entry.sum = entry.sum + elapsed
  entry.buckets[bucket] = entry.buckets[bucket] + 1
end)

core.register_cli({"mesh", "latency"}, "mesh latency: per model, path and status: count, sum (us), buckets",
  function(applet)
    for key, entry in pairs(latency) do
      applet:send(key .. " " .. entry.count .. " " .. entry.sum .. " " .. table.concat(entry.buckets, " ") .. "\\n")
    end
  end)
""".replace("{LATENCY_BOUNDS_US}", "{" + ", ".join(str(b) for b in LATENCY_BOUNDS_US) + "}")


PLACEHOLDER_ADDRESS = "127.0.0.1:1"
SERVER_OPTIONS = "proto h2 check inter 2s fall 1 rise 1 observe layer4 error-limit 1 on-error mark-down"
"""A runtime's server: h2 to the runtime, marked down on its first connection error (so that the request's retry,
and the requests after it, go to the backup: mesh's door), and checked every 2 s (a connect) so that it comes back
once the runtime answers again."""


ACCESS_FORMAT = "%[var(txn.model)] %b %ST %[var(txn.grpc_status)] %Ta %U %B %HPO"
"""model, backend, HTTP status, grpc-status ("-" when it comes in the trailers: OK with HTTP 200), total time in
ms, bytes in, bytes out, path: what engine/access.py parses."""


def access_log_lines(files: EngineFiles, enabled: bool) -> list[str]:
    """The frontend lines that log each request the engine routed itself (the others are mesh's to log)."""
    if not enabled:
        return []
    return [
        f"  log {files.access_socket} len 4096 format raw local0 info",
        f'  log-format "{ACCESS_FORMAT}"',
        "  http-response set-var(txn.grpc_status) res.hdr(grpc-status)",
    ]


def latency_lines(enabled: bool) -> list[str]:
    """The frontend lines that time each routed request (Lua's mesh_observe counts it when a runtime answered)."""
    if not enabled:
        return []
    return [
        "  http-request set-var(txn.arrived_us) date(0,us)",
        "  http-response lua.mesh_observe if { var(txn.backend) -m found }",
    ]


def render(layout: HAProxyLayout) -> str:
    files = layout.files
    maps = {name: files.map(name) for name in MAPS}
    timeout = f"{int(layout.timeout_s * 1000)}ms"
    body_routed = f"{MODEL_INFER} {MODEL_METADATA}"
    limit = layout.max_message_bytes
    lines = [
        "global",
        f"  stats socket {files.admin_socket} mode {'666' if layout.shared else '600'} level admin",
        # mesh's commands come several at a time (drains, route changes, usage); the default allows 10.
        "  stats maxconn 64",
        f"  description {layout.generation}",
        # A reload (sidecar) lets the old worker finish its requests, but not hold long-lived streams forever.
        "  hard-stop-after 60s",
        f"  nbthread {layout.threads}",
        f"  lua-load {files.lua}",
        "",
        "defaults",
        "  mode http",
        "  timeout connect 5s",
        f"  timeout client {timeout}",
        f"  timeout server {timeout}",
        "  timeout http-request 30s",
        "",
        "frontend grpc",
        f"  bind {layout.grpc.bind()} proto h2{tls_options(files, layout.tls, layout.mtls, 'h2')}",
        *latency_lines(layout.latency),
        *access_log_lines(files, layout.access_log),
        # mesh_decides (its lines are ORed): calls mesh answers itself, binary routing headers (mesh checks they are
        # UTF-8), and messages over the limit, read from the 5-byte gRPC prefix (mesh's door refuses them with
        # RESOURCE_EXHAUSTED from gRPC itself, which reads the rest of the stream first: an early answer from the
        # engine would reach a client still sending as CANCELLED).
        "  http-request wait-for-body time 1s at-least 5",
        "  http-request set-var(txn.message_bytes) req.body,bytes(1,4),be2dec(:,4)",
        f"  acl mesh_decides path {' '.join(MESH_ANSWERS)}",
        "  acl mesh_decides req.hdr(mm-model-id-bin) -m found",
        "  acl mesh_decides req.hdr(mm-vmodel-id-bin) -m found",
        f"  acl mesh_decides var(txn.message_bytes) -m int gt {limit}",
        "  acl model_header req.hdr(mm-model-id) -m found",
        "  acl vmodel_header req.hdr(mm-vmodel-id) -m found",
        f"  acl body_routed path {body_routed}",
        # ACLs on variables are evaluated where a rule uses them, after the rules above it set the variables.
        "  acl named var(txn.name) -m found",
        "  acl has_model var(txn.model) -m found",
        "  acl has_copies var(txn.copies) -m found",
        "  acl several_copies var(txn.copies) -m sub ,",
        "  acl routed var(txn.backend) -m found",
        "  http-request set-var(txn.model) req.hdr(mm-model-id) if model_header !vmodel_header !mesh_decides",
        f"  http-request set-var(txn.model) req.hdr(mm-vmodel-id),map({maps['vmodels']}) "
        "if vmodel_header !model_header !mesh_decides",
        "  http-request wait-for-body time 1s at-least 1k if body_routed !model_header !vmodel_header",
        "  http-request set-var(txn.name) req.body,ungrpc(1) if body_routed !model_header !vmodel_header",
        "  http-request set-var(txn.name) lua.mesh_body_model if body_routed !model_header !vmodel_header !named",
        f"  http-request set-var(txn.model) var(txn.name),map({maps['vmodels']}) if named",
        f"  http-request set-var(txn.copies) var(txn.name),map({maps['by_name']}) if named !has_model",
        "  http-request set-var(txn.model) var(txn.name) if has_copies",
        f"  http-request set-var(txn.copies) var(txn.model),map({maps['by_header']}) if !has_copies has_model",
        "  http-request set-var(txn.backend) var(txn.copies) if has_copies !several_copies !mesh_decides",
        "  http-request set-var(txn.backend) lua.mesh_pick if several_copies !mesh_decides",
        "  http-request set-header mm-model-id %[var(txn.model)] if routed",
        "  http-request del-header mm-vmodel-id if routed",
        f"  http-request track-sc0 var(txn.model) table {USAGE_TABLE} if routed",
        "  http-request set-var(txn.copy) var(txn.model),concat(@,txn.backend,) if routed",
        f"  http-request track-sc1 var(txn.copy) table {COPIES_TABLE} if routed",
        *(["  http-request set-var(txn.path) path if routed"] if layout.latency else []),
        *(["  http-request set-log-level silent if !routed"] if layout.access_log else []),
        "  use_backend %[var(txn.backend)] if routed",
        "  default_backend mesh_grpc",
        "",
        "backend mesh_grpc",
        f"  server mesh {layout.mesh_grpc} proto h2",
        "",
        f"backend {USAGE_TABLE}",
        f"  stick-table type string len {STICK_KEY_BYTES} size 1m expire 24h store http_req_cnt",
        "",
        f"backend {COPIES_TABLE}",
        f"  stick-table type string len {STICK_KEY_BYTES} size 1m expire 10m store http_req_cnt",
    ]
    if layout.rest is not None and layout.mesh_rest is not None:
        lines += [
            "",
            "frontend rest",
            f"  bind {layout.rest.bind()}{tls_options(files, layout.tls, layout.mtls, 'h2,http/1.1')}",
            "  default_backend mesh_rest",
            "",
            "backend mesh_rest",
            f"  server mesh {layout.mesh_rest}",
        ]
    servers = dict(layout.servers)
    for slot in range(layout.slots):
        lines += [
            "",
            f"backend {BACKEND_PREFIX}{slot}",
            # A runtime that refused the connection or closed it unanswered: the request is sent again, to the
            # backup (mesh) once the runtime is marked down. The mark takes effect a moment after the error, so
            # the first retry may meet the same server: three leave room for it.
            "  retry-on conn-failure empty-response",
            "  option redispatch 1",
            "  retries 3",
            f"  server mesh {layout.mesh_grpc} proto h2 backup",
            f"  server rt {servers.get(slot, PLACEHOLDER_ADDRESS)} {SERVER_OPTIONS}"
            + ("" if slot in servers else " disabled"),
        ]
    return "\n".join(lines) + "\n"
