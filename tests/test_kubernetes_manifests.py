"""deploy/kubernetes and examples/kubernetes against the Kubernetes schemas
(kubernetes-validate, strict: an unknown field is an error), and against watchdog-d
itself: every command line parses with our own CLI, the agent reaches the coordinator's
Service, the probes use the gRPC health service, the training pods share what the agent
reads. Nothing here ran on a real cluster (docs/not-yet.md)."""
from __future__ import annotations

import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from watchdog_d.cli import build_parser

ROOT = Path(__file__).parents[1]
BASE = ROOT / "deploy" / "kubernetes" / "base"
EXAMPLES = ROOT / "examples" / "kubernetes"
VERSION = kubernetes_validate.latest_version()


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all() -> list[tuple[str, dict]]:
    return [(f"{p.relative_to(ROOT)}#{i}", d) for p in sorted([*BASE.glob("*.yaml"),
                                                              *EXAMPLES.glob("*.yaml")])
            for i, d in enumerate(_docs(p)) if p.name != "kustomization.yaml"]


def _kind(kind: str) -> list[dict]:
    return [d for _, d in _all() if d["kind"] == kind]


def _pod_templates() -> list[tuple[str, dict]]:
    """(where, pod spec) of every workload and example."""
    out = []
    for where, d in _all():
        if d["kind"] in ("Deployment", "DaemonSet"):
            out.append((where, d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            out.append((where, d["spec"]))
        elif d["kind"] == "PyTorchJob":
            for role, replica in d["spec"]["pytorchReplicaSpecs"].items():
                out.append((f"{where}:{role}", replica["template"]["spec"]))
    return out


@pytest.mark.parametrize("where,doc", _all(), ids=[w for w, _ in _all()])
def test_each_manifest_is_valid_against_the_kubernetes_schemas(where: str, doc: dict) -> None:
    if doc["kind"] == "PyTorchJob":
        # a CRD: its pod templates are checked as what they are
        for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
            assert replica["restartPolicy"] == "Never", role   # watchdog-d restarts, not the operator
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                          "metadata": {"name": role.lower()},
                                          "template": replica["template"]}, VERSION, strict=True)
        return
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_schema_check_is_not_a_rubber_stamp() -> None:
    bad = _kind("DaemonSet")[0]
    bad = {**bad, "spec": {**bad["spec"], "hostPid": True}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_the_kustomization_lists_every_base_file() -> None:
    k = _docs(BASE / "kustomization.yaml")[0]
    assert sorted(k["resources"]) == sorted(p.name for p in BASE.glob("*.yaml")
                                            if p.name != "kustomization.yaml")


def _container_args(spec: dict) -> list[str]:
    c = spec["containers"][0]
    words = [*c.get("command", []), *c.get("args", [])]
    if words[:2] == ["sh", "-c"]:
        words = shlex.split(words[2].replace("exec ", "", 1))
    if words[:1] == ["watchdog-d"]:
        words = words[1:]
    return words


def test_every_command_line_parses_with_watchdog_d_itself() -> None:
    for where, spec in _pod_templates():
        args = _container_args(spec)
        cut = args.index("--") if "--" in args else len(args)
        build_parser().parse_args(args[:cut])          # (exits on an unknown flag)
        if args[0] == "run":
            assert args[cut + 1] == "torchrun", where


def test_the_agent_reaches_the_coordinators_service_and_probes_use_grpc_health() -> None:
    service = _kind("Service")[0]
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    agent = _kind("DaemonSet")[0]["spec"]["template"]["spec"]
    args = build_parser().parse_args(_container_args(agent))
    assert args.coordinator == f"{service['metadata']['name']}.watchdog-d.svc:{grpc_port}"
    coordinator = _kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert coordinator[probe]["grpc"]["port"] == grpc_port
    assert agent["hostPID"] is True


def test_training_pods_share_what_the_agent_reads_at_the_same_paths() -> None:
    agent = _kind("DaemonSet")[0]["spec"]["template"]["spec"]
    agent_args = build_parser().parse_args(_container_args(agent))
    host_of = {v["name"]: v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v}
    agent_mounts = {m["mountPath"]: host_of.get(m["name"]) for m in agent["containers"][0]["volumeMounts"]}
    for where, spec in _pod_templates():
        args = _container_args(spec)
        if args[0] != "run":
            continue
        assert not spec.get("hostPID"), where        # (the agent translates PIDs: pidns)
        run = build_parser().parse_args(args[:args.index("--")])
        assert run.agent_socket == agent_args.socket, where
        host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
        mounts = {m["mountPath"]: host.get(m["name"]) for m in spec["containers"][0]["volumeMounts"]}
        for path in ("/run/watchdog-d", "/dev/shm"):
            assert mounts[path] == agent_mounts[path], (where, path)
        # the wrapper's state dir (its rank logs) is the same host directory in the agent
        state = run.state_dir
        host_dir = mounts[state]
        agent_root = agent_mounts["/var/lib/watchdog-d"]
        assert host_dir == state and host_dir.startswith(agent_root + "/"), (where, state)
