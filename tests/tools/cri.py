#!/usr/bin/python3
"""A minimal CRI client: the calls kubelet makes to run and remove a pod
sandbox, enough to drive containerd's CRI plugin (and through it our CNI
plugins) in the end-to-end tests. Debian 12 packages neither kubelet nor
crictl.

Messages are encoded by hand (the few fields of runtime.v1 used here, with
their numbers from the CRI's api.proto); grpc (Debian's python3-grpcio)
carries the bytes. Prints JSON on stdout.

  cri.py SOCKET version
  cri.py SOCKET runp NAME UID NAMESPACE CGROUP_PARENT [HOST:CONTAINER ...]
  cri.py SOCKET status SANDBOX_ID
  cri.py SOCKET stopp SANDBOX_ID
  cri.py SOCKET rmp SANDBOX_ID
"""

import json
import sys

import grpc

SERVICE = "/runtime.v1.RuntimeService/"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def num(field, value):
    return varint(field << 3) + varint(value)


def raw(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def text(field, value):
    return raw(field, value.encode())


def decode(buf):
    """Fields of a message: number -> list of int (varint) or bytes."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(field, []).append(value)
    return fields


def read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def first(fields, n, default=b""):
    return fields.get(n, [default])[0]


def sandbox_config(name, uid, namespace, cgroup_parent, ports):
    metadata = text(1, name) + text(2, uid) + text(3, namespace) + num(4, 0)
    mappings = b""
    for p in ports:
        host, container = p.split(":")
        # PortMapping: protocol 1 (TCP = 0), container_port 2, host_port 3.
        mappings += raw(5, num(1, 0) + num(2, int(container)) + num(3, int(host)))
    # NamespaceOption: network 1, pid 2, ipc 3; POD = 0, so all POD.
    security = raw(1, num(1, 0))
    linux = text(1, cgroup_parent) + raw(2, security)
    return raw(1, metadata) + text(2, name) + mappings + raw(8, linux)


def main(argv):
    sock, verb, args = argv[1], argv[2], argv[3:]
    channel = grpc.insecure_channel("unix://" + sock)

    def call(method, request):
        rpc = channel.unary_unary(SERVICE + method)
        return decode(rpc(request, timeout=60))

    if verb == "version":
        r = call("Version", text(1, "v1"))
        out = {
            "runtime_name": first(r, 2).decode(),
            "runtime_version": first(r, 3).decode(),
            "runtime_api_version": first(r, 4).decode(),
        }
    elif verb == "runp":
        name, uid, namespace, cgroup_parent, ports = args[0], args[1], args[2], args[3], args[4:]
        r = call("RunPodSandbox", raw(1, sandbox_config(name, uid, namespace, cgroup_parent, ports)))
        out = {"id": first(r, 1).decode()}
    elif verb == "status":
        r = call("PodSandboxStatus", text(1, args[0]))
        status = decode(first(r, 1))
        network = decode(first(status, 5))
        ips = [first(network, 1).decode()]
        ips += [first(decode(extra), 1).decode() for extra in network.get(2, [])]
        # PodSandboxState: SANDBOX_READY = 0, SANDBOX_NOTREADY = 1.
        out = {"state": first(status, 3, 0), "ips": [ip for ip in ips if ip]}
    elif verb in ("stopp", "rmp"):
        call("StopPodSandbox" if verb == "stopp" else "RemovePodSandbox", text(1, args[0]))
        out = {}
    else:
        raise SystemExit(f"unknown verb {verb}")
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    try:
        main(sys.argv)
    except grpc.RpcError as e:
        print(f"cri: {e.code()}: {e.details()}", file=sys.stderr)
        sys.exit(1)
