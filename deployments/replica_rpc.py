"""A Serve replica's inter-deployment gRPC server on its node's address, not on every interface.

Ray 2.60 binds that server to ``[::]:0`` (ray/serve/_private/replica.py, in either Serve mode,
with no setting), and it unpickles what it is sent. Callers reach a replica at its node's IP
(Serve's replica info: ``node_ip`` and the port), so listening on that address alone changes
nothing for them: 127.0.0.1 on one machine (ray_env.py keeps Ray there), the pod's address in a
cluster. Each deployment calls ``listen_on_node_address()`` first in its constructor, which Serve
runs before it starts that server. Token auth (ray_env.py) still guards the port.
"""

from __future__ import annotations

import logging

import ray

log = logging.getLogger("ray.serve")


def listen_on_node_address() -> None:
    if not ray.is_initialized():  # not a replica: no server to bind, no node to ask
        return
    from ray.serve._private import replica

    bind = replica.__dict__.get("add_port_to_grpc_server")
    if bind is None:  # another Ray: the binding moved; say so rather than guess
        log.warning("Serve's replica no longer binds its gRPC port through add_port_to_grpc_server: "
                    "its inter-deployment server may listen on every interface")
        return
    if getattr(bind, "on_node_address", False):
        return
    host = ray.util.get_node_ip_address()
    node = f"[{host}]" if ":" in host else host

    def on_node_address(server, address: str):
        if address.startswith("[::]:"):
            address = f"{node}:{address.removeprefix('[::]:')}"
        return bind(server, address)

    on_node_address.on_node_address = True
    replica.add_port_to_grpc_server = on_node_address
