"""Cross-checks deploy/ against the runtime binary: flags, ports and probe paths.

Called by scripts/check-deploy.sh with the repository root and the code-mode-bin path.
Exits 1 with one line per problem.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

root, binary = Path(sys.argv[1]), sys.argv[2]
problems = []

help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
known_flags = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))


def flag_values(where, args, flags):
    """Each flag's value (empty for a switch); a flag the binary lacks is a problem."""
    values = {}
    for index, arg in enumerate(args):
        if arg.startswith("--"):
            if arg not in flags:
                problems.append(f"{where}: unknown flag {arg}")
            following = args[index + 1] if index + 1 < len(args) else ""
            values[arg] = "" if following.startswith("--") else following
    return values


def check_args(where, args):
    """The runtime's flags must exist, and those it serves with be there; their values."""
    values = flag_values(where, args, known_flags)
    for needed in ("--listen", "--tls-cert", "--tls-key", "--client-ca", "--metrics"):
        if needed not in values:
            problems.append(f"{where}: {needed} is missing")
    return values


def check_selectors(where, documents, labels):
    """The Service and the PodDisruptionBudget must select the Deployment's pods."""
    for kind in ("Service", "PodDisruptionBudget"):
        spec = documents[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        if any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{where}{kind}: its selector does not match the Deployment's pods")


def check_non_root(name, dockerfile):
    """An image must not run as root."""
    if not re.search(r"^USER (?!0\b|root\b)", dockerfile, re.M):
        problems.append(f"{name}: the image must not run as root")


def port(address):
    return int(address.rsplit(":", 1)[1])


# The Dockerfile's CMD (a JSON array over continued lines).
dockerfile = (root / "deploy/Dockerfile").read_text()
cmd = re.search(r"^CMD (\[.*?\])\s*$", dockerfile.replace("\\\n", " "), re.M | re.S)
if cmd is None:
    problems.append("deploy/Dockerfile: no CMD in JSON form")
else:
    docker_args = check_args("Dockerfile CMD", json.loads(cmd.group(1)))
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.*)$", dockerfile, re.M)[0].split()}
    for flag in ("--listen", "--metrics"):
        if flag in docker_args and port(docker_args[flag]) not in exposed:
            problems.append(f"Dockerfile: the {flag} port is not EXPOSEd")
    check_non_root("Dockerfile", dockerfile)

documents = {}
for path in sorted((root / "deploy/kubernetes").glob("*.yaml")):
    for document in yaml.safe_load_all(path.read_text()):
        documents[document["kind"]] = document

deployment = documents["Deployment"]
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
values = check_args("Deployment args", container["args"])
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
if port(values.get("--listen", ":0")) != ports.get("runtime"):
    problems.append("Deployment: --listen does not use the `runtime` container port")
if port(values.get("--metrics", ":0")) != ports.get("metrics"):
    problems.append("Deployment: --metrics does not use the `metrics` container port")
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    got = container.get(probe, {}).get("httpGet", {})
    if got.get("path") != path or got.get("port") != "metrics":
        problems.append(f"Deployment: {probe} must GET {path} on the metrics port")
security = container.get("securityContext", {})
if security.get("readOnlyRootFilesystem") is not True:
    problems.append("Deployment: the root file system must be read-only")
if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
    problems.append("Deployment: the pod must run as non-root")
drain = int(values.get("--drain-timeout-secs", "30"))
if pod.get("terminationGracePeriodSeconds", 30) <= drain:
    problems.append("Deployment: terminationGracePeriodSeconds must exceed --drain-timeout-secs")
mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
secret_name = next(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
secret = documents["Secret"]
if secret["metadata"]["name"] != secret_name:
    problems.append("Secret: its name is not the one the Deployment mounts")
for flag in ("--tls-cert", "--tls-key", "--client-ca"):
    directory, _, key = values.get(flag, "").rpartition("/")
    if directory not in mounts.values():
        problems.append(f"Deployment: {flag} is not under a mounted volume")
    if key not in secret.get("stringData", secret.get("data", {})):
        problems.append(f"Secret: no key {key} for {flag}")

service = documents["Service"]
if service["spec"].get("clusterIP") != "None":
    problems.append("Service: must be headless (clusterIP: None) so hosts see every runtime")
check_selectors("", documents, deployment["spec"]["template"]["metadata"]["labels"])

# The Codex front next to an agent (kubernetes/codex-front/): its flags exist in the
# front built beside the runtime, it reaches the runtimes through the headless Service's
# port, and its probe is the front's own /healthz on its port.
front_binary = str(Path(binary).with_name("codex-code-mode-host"))
front_help = subprocess.run([front_binary, "--help"], capture_output=True, text=True, check=True).stdout
front_flags = set(re.findall(r"--[a-z][a-z0-9-]*", front_help))
agent = yaml.safe_load((root / "deploy/kubernetes/codex-front/agent.yaml").read_text())
front = next(c for c in agent["spec"]["template"]["spec"]["containers"] if c["name"] == "code-mode-front")
front_args = front["args"]
front_values = flag_values("codex-front", front_args, front_flags)
service_port = service["spec"]["ports"][0]["port"]
if port(front_values.get("--runtimes", ":0")) != service_port:
    problems.append("codex-front: --runtimes does not use the runtimes' Service port")
# The front opens sessions for whoever reaches it: off loopback only with client
# certificates (--client-ca), as the front itself refuses to start otherwise.
front_listen = front_values.get("--listen", "")
front_host = front_listen.removeprefix("grpc://").rsplit(":", 1)[0].strip("[]")
if front_host not in ("127.0.0.1", "::1") and "--client-ca" not in front_values:
    problems.append(f"codex-front: --listen {front_listen} is off loopback without --client-ca")
front_ports = {p["name"]: p["containerPort"] for p in front.get("ports", [])}
if front_host in ("127.0.0.1", "::1"):
    if "front" in front_ports:
        problems.append("codex-front: a loopback --listen must not be a container port")
elif port(front_listen.removeprefix("grpc://") or ":0") != front_ports.get("front"):
    problems.append("codex-front: --listen does not use the `front` container port")
# Probes reach the pod's address: the health port, which serves /healthz and nothing else.
health_port = port(front_values.get("--health-listen", ":0"))
if health_port != front_ports.get("health"):
    problems.append("codex-front: --health-listen does not use the `health` container port")
probe = front.get("readinessProbe", {}).get("httpGet", {})
if probe.get("path") != "/healthz" or probe.get("port") != "health":
    problems.append("codex-front: readinessProbe must GET /healthz on the health port")
for name in ("readinessProbe", "livenessProbe"):
    probed = front.get(name, {})
    target = probed.get("httpGet", probed.get("tcpSocket", {})).get("port")
    if target != "health":
        problems.append(f"codex-front: {name} must probe the health port")
front_docker = (root / "deploy/codex-front.Dockerfile").read_text()
check_non_root("codex-front.Dockerfile", front_docker)
if str(health_port) not in re.findall(r"^EXPOSE (.*)$", front_docker, re.M)[0].split():
    problems.append("codex-front.Dockerfile: the health port is not EXPOSEd")


# `mcp --http` replicas (kubernetes/mcp/): the flags exist in `code-mode mcp`, several
# replicas share their sessions through the Postgres the Secret names (never on the
# command line, where a password would show), each leases sessions under its pod's name,
# and the port, probes, Service and Dockerfile agree.
cli_binary = str(Path(binary).with_name("code-mode"))
mcp_help = subprocess.run([cli_binary, "mcp", "--help"], capture_output=True, text=True, check=True).stdout
mcp_flags = set(re.findall(r"--[a-z][a-z0-9-]*", mcp_help))
mcp_documents = {d["kind"]: d for d in yaml.safe_load_all((root / "deploy/kubernetes/mcp/mcp-http.yaml").read_text())}
mcp_deployment = mcp_documents["Deployment"]
mcp_pod = mcp_deployment["spec"]["template"]["spec"]
mcp_container = mcp_pod["containers"][0]
mcp_args = mcp_container["args"]
if mcp_args[:1] != ["mcp"]:
    problems.append("mcp: the container must run `code-mode mcp`")
mcp_values = flag_values("mcp", mcp_args, mcp_flags)
if "--state-url" in mcp_values or "--state-dir" in mcp_values:
    problems.append("mcp: the store must come from the Secret (CODE_MODE_STATE_URL), not the command line")
if mcp_deployment["spec"].get("replicas", 1) < 2:
    problems.append("mcp: replicas that share sessions means at least 2")
env = {e["name"]: e for e in mcp_container.get("env", [])}
state_env = env.get("CODE_MODE_STATE_URL", {}).get("valueFrom", {}).get("secretKeyRef")
if not state_env:
    problems.append("mcp: CODE_MODE_STATE_URL must come from a Secret (secretKeyRef)")
for name, flag in (("CODE_MODE_STATE_URL", "--state-url"), ("CODE_MODE_STATE_REPLICA", "--state-replica")):
    if name not in mcp_help:
        problems.append(f"mcp: `code-mode mcp` does not read {name} ({flag})")
if "CODE_MODE_STATE_ADVERTISE" not in mcp_help:
    problems.append("mcp: `code-mode mcp` does not read CODE_MODE_STATE_ADVERTISE (--state-advertise)")
pod_ip = env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
advertise = env.get("CODE_MODE_STATE_ADVERTISE", {}).get("value", "")
if pod_ip != "status.podIP" or advertise != f"http://$(POD_IP):{port(mcp_values.get('--http', ':0'))}":
    problems.append("mcp: CODE_MODE_STATE_ADVERTISE must be http://$(POD_IP):<the --http port>, POD_IP the pod's IP")
replica = env.get("CODE_MODE_STATE_REPLICA", {}).get("valueFrom", {}).get("fieldRef", {})
if replica.get("fieldPath") != "metadata.name":
    problems.append("mcp: CODE_MODE_STATE_REPLICA must be the pod's name (fieldRef metadata.name)")
if "--auth-token-file" not in mcp_values:
    problems.append("mcp: off loopback it needs --auth-token-file")
mcp_ports = {p["name"]: p["containerPort"] for p in mcp_container["ports"]}
if port(mcp_values.get("--http", ":0")) != mcp_ports.get("mcp"):
    problems.append("mcp: --http does not use the `mcp` container port")
token_dir, _, _ = mcp_values.get("--auth-token-file", "").rpartition("/")
if token_dir not in {m["mountPath"] for m in mcp_container.get("volumeMounts", [])}:
    problems.append("mcp: --auth-token-file is not under a mounted volume")
if mcp_container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
    problems.append("mcp: the root file system must be read-only")
if mcp_pod.get("securityContext", {}).get("runAsNonRoot") is not True:
    problems.append("mcp: the pod must run as non-root")
check_selectors("mcp ", mcp_documents, mcp_deployment["spec"]["template"]["metadata"]["labels"])
mcp_docker = (root / "deploy/mcp.Dockerfile").read_text()
check_non_root("mcp.Dockerfile", mcp_docker)
if str(mcp_ports.get("mcp")) not in re.findall(r"^EXPOSE (.*)$", mcp_docker, re.M)[0].split():
    problems.append("mcp.Dockerfile: the mcp port is not EXPOSEd")

for problem in problems:
    print(f"check-deploy: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
