"""A real multi-process Ray cluster made with ``ray start``, the way users make one.

The head and every worker node is its own ``ray start --block`` process tree, in its own
session, ended by its process group (never ``ray stop``, never by name). All nodes run on
127.0.0.1 of one network namespace that holds only the loopback interface
(``netns_command``): a worker joining with ``ray start --address`` needs Ray's cluster mode,
whose listeners bind to every interface, and in that namespace every interface is loopback.
Token authentication is on, with a token of the test's own.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests.reliability.helpers import (
    alive, cmdline, descendants, end_session, free_port, free_ports, listening, session_members, wait_for,
)

# A node whose GCS is gone exits after this many seconds (Ray's default is 60).
GCS_RECONNECT_S = 10


def netns_command(argv: list[str]) -> list[str]:
    """``argv`` run in a fresh network namespace whose loopback interface is up."""
    script = 'ip link set lo up && exec "$@"'
    return ["unshare", "--net", "--", "sh", "-c", script, "sh", *argv]


def netns_available() -> Optional[str]:
    """None when this machine can make network namespaces, else why not."""
    for tool in ("unshare", "ip", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(netns_command(["true"]), capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.strip()[:200]}"
    return None


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    node_manager_port: int
    log: Path
    id: str = ""  # Ray's node id, once it joined

    def raylet(self) -> Optional[int]:
        found = [p for p in descendants(self.proc.pid) if "/raylet/raylet " in cmdline(p) + " "]
        return found[0] if found else None

    def running_trials(self) -> list[int]:
        return [p for p in descendants(self.proc.pid) if cmdline(p).startswith("ray::_run_remote")]

    def hosts_broker(self) -> bool:
        return any(cmdline(p).startswith("ray::PruningBroker") for p in descendants(self.proc.pid))


class RayStartCluster:
    """Nodes started with ``ray start --block`` on 127.0.0.1 (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        token = folder / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
                        RAY_gcs_rpc_server_reconnect_timeout_s=str(GCS_RECONNECT_S))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[Node] = []
        self.ray = str(Path(sys.executable).with_name("ray"))

    def _start(self, name: str, args: list[str]) -> Node:
        manager, objects, metrics, agent, agent_grpc, runtime_env = free_ports(6, exclude=frozenset({self.port}))
        ports = ["--node-manager-port", str(manager), "--object-manager-port", str(objects),
                 "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent),
                 "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env)]
        log = self.folder / f"{name}.log"
        proc = subprocess.Popen([self.ray, "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *args, *ports],
                                stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        node = Node(name, proc, manager, log)
        self.nodes.append(node)
        return node

    def start_head(self) -> Node:
        """The head: GCS, no CPUs (no trial lands on it); returns once it is up."""
        return self._up(self._start("head", ["--head", f"--port={self.port}", "--num-cpus=0",
                                             "--include-dashboard=false"]))

    def add_worker(self, name: str, num_cpus: int = 1) -> Node:
        """A worker node joined with ``ray start --address``; returns once the cluster lists it."""
        return self._up(self._start(name, [f"--address={self.address}", f"--num-cpus={num_cpus}"]))

    def _up(self, node: Node, timeout: float = 120) -> Node:
        def listed():
            assert node.proc.poll() is None, f"{node.name} exited: {node.log.read_text()[-2000:]}"
            return {n["port"]: n["id"] for n in self.alive_nodes()}.get(node.node_manager_port)

        node.id = wait_for(listed, timeout, f"{node.name} to join the cluster", interval=1.0)
        return node

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes as Ray lists them (from a short-lived Python process)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                "print(json.dumps([{'id': n['NodeID'], 'port': n['NodeManagerPort']} "
                "for n in ray.nodes() if n['Alive']]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env,
                             timeout=60)
        lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
        return json.loads(lines[-1]) if lines else []

    def listeners(self) -> list[str]:
        """Local addresses of every listening socket of the cluster's processes."""
        pids = [p for n in self.nodes for p in [n.proc.pid, *descendants(n.proc.pid)] if alive(p)]
        return sorted({address for address, _ in listening(pids)})

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL the node's raylet (its workers lose their node with it); its PID."""
        pid = node.raylet()
        assert pid is not None, f"{node.name} has no raylet"
        os.kill(pid, signal.SIGKILL)
        return pid

    def end(self, node: Node) -> None:
        end_session(node.proc, timeout=60)

    def end_all(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None or session_members(node.proc.pid):
                self.end(node)
