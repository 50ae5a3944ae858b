"""A gRPC client that is not ours: Python grpcio, with its default channel
options, against elide-daemon's Unix socket.

Usage: original_client.py PROTO_ROOT SOCKET [TCP_ADDR]

Generates Python stubs from the project's .proto files with grpc_tools into a
temporary directory, then:
  * calls elide.daemon.v1.ElideDaemon/Health;
  * drives the original test client's flow over elide.daemon.v1alpha1
    (Health, CreateSession, ExecuteSnippet of print('Hello from Elide!') with
    env TEST, GetExecutionStatus until complete, DeleteSession) and a
    failing snippet and a bad request;
  * with TCP_ADDR: calls Health over TCP with the socket path as authority,
    which the HTTP/2 layer refuses (the failure the Unix socket works around).
Prints one `key=value` line per observation; the Rust test asserts them.
"""

import os
import sys
import tempfile
import time

try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:  # pragma: no cover - message for a missing install
    print(f"MISSING_PYTHON_PACKAGE={e.name}: install with "
          "`pip install grpcio==1.76.0 grpcio-tools==1.76.0` (see .ci/run)")
    sys.exit(3)


def generate(proto_root, out_dir):
    for rel in ("elide/daemon/v1/daemon.proto",
                "elide/daemon/v1alpha1/execution_api.proto"):
        well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        code = protoc.main([
            "protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", rel,
        ])
        if code != 0:
            raise SystemExit(f"protoc failed on {rel}: {code}")
    sys.path.insert(0, out_dir)


def main():
    proto_root, socket = sys.argv[1], sys.argv[2]
    tcp = sys.argv[3] if len(sys.argv) > 3 else None
    out_dir = tempfile.mkdtemp(prefix="elide-py-stubs-")
    generate(proto_root, out_dir)
    from elide.daemon.v1 import daemon_pb2 as v1, daemon_pb2_grpc as v1_grpc
    from elide.daemon.v1alpha1 import execution_api_pb2 as pb
    from elide.daemon.v1alpha1 import execution_api_pb2_grpc as pb_grpc

    print(f"grpcio={grpc.__version__}")
    # Default options: grpcio sends the socket path as :authority.
    channel = grpc.insecure_channel(f"unix:{socket}")

    health = v1_grpc.ElideDaemonStub(channel).Health(v1.HealthRequest(), timeout=10)
    print(f"v1.health.status={v1.HealthResponse.ServingStatus.Name(health.status)}")
    print(f"v1.health.version={health.version}")

    api = pb_grpc.ExecutionApiStub(channel)
    h = api.Health(pb.HealthRequest(), timeout=10)
    print(f"alpha.health.healthy={h.healthy}")

    config = pb.SessionConfiguration(
        context_pool_size=10, enabled_languages=["python", "javascript"],
        enabled_intrinsics=["io", "env"], memory_limit_mb=512, enable_ai=False)
    created = api.CreateSession(
        pb.CreateSessionRequest(session_id="py-session", config=config), timeout=10)
    print(f"alpha.create.status={pb.SessionStatus.Name(created.status)}")
    print(f"alpha.create.created_at_age={int(time.time()) - created.created_at}")

    def run(execution_id, code, env=None):
        started = api.ExecuteSnippet(pb.ExecuteSnippetRequest(
            session_id="py-session", execution_id=execution_id, code=code,
            language="python", env=env or {}), timeout=10)
        print(f"alpha.{execution_id}.initial={pb.ExecutionStatus.Name(started.status)}")
        deadline = time.time() + 60
        while True:
            st = api.GetExecutionStatus(pb.GetExecutionStatusRequest(
                session_id="py-session", execution_id=execution_id), timeout=10)
            if st.complete or time.time() > deadline:
                return st
            time.sleep(0.1)

    st = run("hello", "import os\nprint('Hello from Elide!')\nprint('TEST=' + os.environ['TEST'])",
             {"TEST": "value"})
    print(f"alpha.hello.status={pb.ExecutionStatus.Name(st.status)}")
    print(f"alpha.hello.exit_code={st.exit_code}")
    print(f"alpha.hello.stdout={st.stdout!r}")

    st = run("boom", "import sys\nsys.stderr.write('bad thing\\n')\nsys.exit(4)")
    print(f"alpha.boom.status={pb.ExecutionStatus.Name(st.status)}")
    print(f"alpha.boom.exit_code={st.exit_code}")
    print(f"alpha.boom.stderr={st.stderr!r}")
    print(f"alpha.boom.error={st.error!r}")

    try:
        api.ExecuteSnippet(pb.ExecuteSnippetRequest(
            session_id="py-session", execution_id="ruby", code="puts 1",
            language="ruby"), timeout=10)
        print("alpha.ruby.code=OK")
    except grpc.RpcError as e:
        print(f"alpha.ruby.code={e.code().name}")
        print(f"alpha.ruby.details={e.details()!r}")

    deleted = api.DeleteSession(pb.DeleteSessionRequest(session_id="py-session"), timeout=10)
    print(f"alpha.delete.success={deleted.success}")
    channel.close()

    if tcp:
        # Over TCP the daemon has no rewrite; a socket path as authority is
        # what h2 refuses.
        forced = grpc.insecure_channel(tcp, options=[("grpc.default_authority", socket)])
        try:
            v1_grpc.ElideDaemonStub(forced).Health(v1.HealthRequest(), timeout=10)
            print("tcp.socket_authority.code=OK")
        except grpc.RpcError as e:
            print(f"tcp.socket_authority.code={e.code().name}")
            print(f"tcp.socket_authority.details={e.details()!r}")
        forced.close()


if __name__ == "__main__":
    main()
