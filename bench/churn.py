"""New-flow churn: what the agent costs and whether it stays exact when every packet is a new flow.

A busy ingress, DNS-heavy or batch node opens thousands of short connections per second.

One bridge node of the lab (agent/lab.py) with a client and a server pod. The client sends
one UDP packet per new 5-tuple at a steady rate (bench/churn_traffic.py: raw socket,
sendmmsg, paced every millisecond; what it really sent is reported); the server reads them
all. For each rate, `podflow agent` runs in the node's namespace as the lab starts it (both
pod veths and cni0 traced, lab metadata, metrics on, flow log on with rotation raised so
nothing rotates away), alone; with --peer, then netobserv-ebpf-agent alone on the same
traffic (see /work/peers/NETOBSERV.md for its build and configuration). Per run:
  - CPU: utime+stime of the agent's process tree, in cores while the churn runs, and in
    CPU-ms per flow over churn + drain (the agent catching up counts);
  - RSS of the tree: idle before the churn, peak, and after the drain;
  - records emitted (the flow log's flow lines, or netobserv's JSON lines), records per flow,
    output bytes per one-packet flow;
  - packets: "exact" when the churn packets in the records equal the packets sent at each
    observation point they crossed (podflow: the client's veth FROM_POD and the server's
    veth TO_POD, where the flow log's record of the server's veth, when it repeats the
    client's with the same counts, is left out and its packets are the client's record's;
    netobserv counts a packet once, at the first interface); the details also
    hold every record's packets per veth and direction against the veth's own counters;
  - lost, by stage: ServerStatus (and the flow log's lost-events lines), the kernel's
    map/ring-buffer counters; netobserv's dropped/errors metrics;
  - time to stop on SIGTERM (the drained agent).
The drain ends when the output has not grown for 3 s, no sooner than the agent needs to end
the last flows (podflow: idle timeout + 3 s; netobserv: active timeout + 3 s), after at most
--drain-max seconds. A run whose agent's RSS passes --rss-limit-mb is stopped and marked.

The node's conntrack table (262,144 entries) holds unreplied UDP entries 30 s, i.e. ~8,700
new flows/s: above that the kernel drops packets, which is neither agent's doing. The bench
shortens that timeout to 3 s in the node's namespace (the table then holds 50,000 new
flows/s; podflow's conntrack reader still sees every NEW and DESTROY event) and reports the
kernel's conntrack drops; --notrack exempts the churn from conntrack instead.

    .venv/bin/python -m bench.churn [--rates 2000,10000,50000] [--seconds 60]
        [--peer /work/peers/bin/netobserv-ebpf-agent] [--profile profile.txt [--profile-gil]]

Exits 1 when a podflow run missed a packet it did not count as lost, did not drain or
passed the RSS limit (like bench.datapath), after printing every table. --profile records
the agent with py-spy (raw collapsed stacks) during the churn at --profile-rate and prints
its top functions; --keep DIR keeps each run's output for a closer look.

The agent's command line is PODFLOW_ARGS below (plus PF_BENCH_AGENT_ARGS / --agent-args);
netobserv's configuration is netobserv_env().
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import grpc

from bench.datapath import _link_counters, _quiet_pods, _status

TRAFFIC_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "churn_traffic.py")
PORT_BASE = 40000      # the sink listens on PORT_BASE .. PORT_BASE + PORTS - 1
PORTS = 64
# The sender and the sink run ahead of the agents on this shared 2-core machine, so the churn
# stays on schedule however busy the agent under test is: at 50,000/s the sender needs ~0.7
# core (the kernel's path of its packets runs in its context) and the sink ~0.1.
TRAFFIC_NICE = ("nice", "-n", "-10")
NODE_CT_UDP_TIMEOUT_S = 3

# `podflow agent` as the DaemonSet runs it (flow log and metrics on), except that the flow
# log never rotates during a run. The lab adds --node-name, --listen, --ready-file and
# --metadata. Adjust here when the agent's flags change (e.g. --idle-timeout).
PODFLOW_ARGS = ("--flow-log", "{flow_log}", "--flow-log-max-size-mb", "1000000",
                "--flow-log-max-backups", "1", "--metrics", "127.0.0.1:0")
PODFLOW_DRAIN_MIN_S = 5 + 3  # the agent's default --idle-timeout, then a sweep and a flush

# netobserv attaches to matching interfaces in every namespace named in /var/run/netns (on
# this shared host: other labs' cni0, and this node's namespace a second time, which counts
# each packet twice): it runs in a mount namespace where that directory is empty, so it sees
# only the node's namespace it is started in. Its kernel check reads uname: see NETOBSERV.md
# (this kernel refuses fentry programs, which it loads on kernels >= 5.14).
NETOBSERV_LAUNCH = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs netobserv-no-netns /run/netns && exec "$0" "$@"',
                    "setarch", "x86_64", "--uname-2.6")
NETOBSERV_METRICS_PORT = 9401
NETOBSERV_ACTIVE_TIMEOUT_S = 5
NETOBSERV_DRAIN_MIN_S = NETOBSERV_ACTIVE_TIMEOUT_S + 3
STOP_TIMEOUT_S = 60.0
PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")  # pip install py-spy
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


def netobserv_env(interfaces: list[str]) -> dict[str, str]:
    """netobserv-ebpf-agent configured to be exact here: every packet (no sampling), a flow
    cache of 100,000, its flows as JSON lines on stdout through its built-in
    flowlogs-pipeline (direct-flp), metrics for its drop counters on loopback."""
    flp = {"pipeline": [{"name": "writer", "follows": "preset-ingester"}],
           "parameters": [{"name": "writer",
                           "write": {"type": "stdout", "stdout": {"format": "json"}}}]}
    return {"INTERFACES": ",".join(interfaces), "EXCLUDE_INTERFACES": "lo",
            "SAMPLING": "0", "CACHE_MAX_FLOWS": "100000",
            "CACHE_ACTIVE_TIMEOUT": f"{NETOBSERV_ACTIVE_TIMEOUT_S}s",
            "EXPORT": "direct-flp", "FLP_CONFIG": json.dumps(flp), "LOG_LEVEL": "info",
            "METRICS_ENABLE": "true", "METRICS_SERVER_ADDRESS": "127.0.0.1",
            "METRICS_SERVER_PORT": str(NETOBSERV_METRICS_PORT),
            # Attach events labelled with the interface (only they use this level).
            "METRICS_LEVEL": "trace!"}


# ----------------------------------------------------------------------------- processes

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids[ppid].append(int(name))
    return kids


def tree_pids(root: int) -> list[int]:
    """The process and its descendants (threads are inside their process's counters)."""
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def tree_usage(root: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of the process tree now: utime + stime + the CPU of children
    it already reaped, and resident pages."""
    cpu_s, rss = 0.0, 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
                rss += int(fh.read().split()[1]) * _PAGE
        except (OSError, IndexError):
            continue
        cpu_s += sum(int(f) for f in fields[11:15]) / _TICKS
    return cpu_s, rss


class Sampler(threading.Thread):
    """CPU and RSS of an agent's process tree every `every_s`; the peak RSS, and an abort
    flag once RSS passes the limit (the churn is then cut short)."""

    def __init__(self, pid: int, rss_limit: int, every_s: float = 0.5):
        super().__init__(daemon=True, name="sampler")
        self.pid, self.rss_limit, self.every_s = pid, rss_limit, every_s
        self.peak_rss = 0
        self.over_limit = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            _, rss = tree_usage(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            if rss > self.rss_limit:
                self.over_limit.set()

    def stop(self) -> None:
        self._done.set()
        self.join()


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as fh:
        return " ".join(fh.read().split()[:3])


def _conntrack_drops(node) -> int:
    """Packets the node's conntrack refused (table full: drop, early_drop, insert_failed),
    summed over CPUs, from /proc/net/stat/nf_conntrack in its namespace."""
    out = node.run(["cat", "/proc/net/stat/nf_conntrack"], capture_output=True, text=True,
                   check=False).stdout.split("\n")
    if len(out) < 2:
        return 0
    names = out[0].split()
    total = 0
    for row in out[1:]:
        values = row.split()
        if len(values) != len(names):
            continue
        for name in ("drop", "early_drop", "insert_failed"):
            total += int(values[names.index(name)], 16)
    return total


# ----------------------------------------------------------------------------- one run

@dataclass
class RunResult:
    agent: str
    rate: int
    seconds: float
    load_before: str = ""
    load_after: str = ""
    sent: int = 0
    sent_s: float = 0.0
    max_lag: int = 0
    received: int = 0
    generator_cpu_s: float = 0.0
    sink_cpu_s: float = 0.0
    churn_wall_s: float = 0.0
    cpu_churn_s: float = 0.0
    cpu_drain_s: float = 0.0
    drain_s: float = 0.0
    drained: bool = True
    idle_cores: float = 0.0
    rss_idle: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    records: int = 0
    churn_records: int = 0
    kinds: dict = field(default_factory=dict)      # podflow: record kinds
    output_bytes: int = 0
    churn_packets_from_pod: int = 0
    churn_packets: int = 0                         # every hook (podflow) / once (netobserv)
    counted: dict = field(default_factory=dict)    # (ifname, direction) -> packets in records
    churn_counted: dict = field(default_factory=dict)  # the same, churn records only
    truth: dict = field(default_factory=dict)      # (ifname, direction) -> veth counters
    lost: dict = field(default_factory=dict)       # stage -> count
    log_lost: dict = field(default_factory=dict)   # stage -> count (flow log lines)
    lost_packets: dict = field(default_factory=dict)      # stage -> packets (ServerStatus)
    log_lost_packets: dict = field(default_factory=dict)  # stage -> packets (flow log lines)
    kernel_errors: dict = field(default_factory=dict)
    conntrack_drops: int = 0
    stop_s: float = 0.0
    stop_note: str = ""
    notes: list = field(default_factory=list)

    @property
    def cores(self) -> float:
        return self.cpu_churn_s / self.churn_wall_s if self.churn_wall_s else 0.0

    @property
    def cpu_ms_per_flow(self) -> float:
        return 1000 * (self.cpu_churn_s + self.cpu_drain_s) / self.sent if self.sent else 0.0

    aborted: bool = False
    client_veth: str = ""
    server_veth: str = ""
    folded_packets: int = 0  # receiver packets the flow log left in the sender's records

    @property
    def exact(self) -> bool:
        """Every churn packet in the records: podflow at both observation points it crossed
        (the client's veth leaving the pod, the server's veth entering it), netobserv once."""
        if self.agent == "podflow":
            return (self.churn_counted.get((self.client_veth, "FROM_POD"), 0) == self.sent
                    and self.churn_counted.get((self.server_veth, "TO_POD"), 0) == self.sent)
        return self.churn_packets == self.sent

    # Stages whose losses are missing from the flow log: the kernel's (from ServerStatus: the
    # records never reached the agent) and the flow log's own (from its lost-events lines).
    KERNEL_STAGES = ("KERNEL_FLOW_MAP", "KERNEL_RING_BUFFER")
    LOG_STAGES = ("EXPORTER_QUEUE", "EXPORTER_WRITE")

    @property
    def unaccounted(self) -> int | None:
        """podflow: churn packets neither in the flow log nor counted as lost with their
        packets, over both observation points (0: every packet in a record or counted lost;
        negative: more counted than sent). The only non-churn traffic on these veths is a
        handful of neighbour-discovery packets, which may be lost too."""
        if self.agent != "podflow":
            return None
        lost = (sum(self.lost_packets.get(s, 0) for s in self.KERNEL_STAGES)
                + sum(self.log_lost_packets.get(s, 0) for s in self.LOG_STAGES))
        return 2 * self.sent - self.churn_packets - lost


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.extra_args = [*os.environ.get("PF_BENCH_AGENT_ARGS", "").split(),
                           *shlex.split(args.agent_args or "")]
        self.rss_limit = args.rss_limit_mb * MIB

    # -- the lab --------------------------------------------------------------------------

    def build(self, lab) -> None:
        self.lab = lab
        self.node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        self.client = self.node.add_pod("bench", "churn-client")
        self.server = self.node.add_pod("bench", "churn-server")
        _quiet_pods(self.client, self.server, self.node.gateway)
        node = self.node
        node.run(["sysctl", "-qw",
                  f"net.netfilter.nf_conntrack_udp_timeout={NODE_CT_UDP_TIMEOUT_S}"])
        if self.args.notrack:
            node.run(["iptables", "-w", "5", "-t", "raw", "-A", "PREROUTING", "-p", "udp",
                      "--dport", f"{PORT_BASE}:{PORT_BASE + PORTS - 1}", "-j", "NOTRACK"])
        self.veths = [self.client.host_ifname, self.server.host_ifname]
        # No IPv6 on the node's side either (router solicitations, MLD): only the churn and
        # nothing else crosses the veths, so their counters are the truth for the records.
        node.run(["sysctl", "-qw", *(f"net.ipv6.conf.{i}.disable_ipv6=1"
                                     for i in (*self.veths, "cni0"))])
        # The server pod never sends, so the bridge would forget its MAC after its ageing
        # time (300 s) and flood the churn to every port, back out of the client's veth too
        # (hairpin is on): each packet then crosses that veth twice (netobserv counts it
        # twice). Static entries keep the path fixed for the whole run.
        for pod in (self.client, self.server):
            mac = json.loads(pod.run(["ip", "-j", "link", "show", "dev", "eth0"],
                                     capture_output=True, text=True).stdout)[0]["address"]
            node.run(["bridge", "fdb", "replace", mac, "dev", pod.host_ifname, "master",
                      "static"])
        self.metadata = lab.write_metadata(os.path.join(lab.run_dir, "churn-metadata.json"))

    def _sink(self) -> subprocess.Popen:
        proc = self.server.popen([*TRAFFIC_NICE, sys.executable, "-I", "-S", TRAFFIC_SCRIPT,
                                  "sink", str(PORT_BASE), str(PORTS)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if '"ready"' not in line:
            raise RuntimeError(f"churn sink did not start: {proc.stderr.read()[-2000:]}")
        return proc

    @staticmethod
    def _sink_report(proc: subprocess.Popen) -> dict:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        for line in out.splitlines():
            if '"received"' in line:
                return json.loads(line)
        return {"received": -1}

    def _truth(self) -> dict:
        counters = {}
        for veth in self.veths:
            rx, tx = _link_counters(self.node, veth)
            counters[(veth, "FROM_POD")] = rx
            counters[(veth, "TO_POD")] = tx
        return counters

    # -- agents ---------------------------------------------------------------------------

    def _start_podflow(self, workdir: str):
        flow_log = os.path.join(workdir, "flows.jsonl")
        args = [a.format(flow_log=flow_log) for a in PODFLOW_ARGS] + self.extra_args
        agent = self.node.start_agent(*args, metadata_file=self.metadata)
        wanted = set(self.veths) | {"cni0"}
        if not wanted <= set(agent.ready.get("interfaces", [])):
            raise RuntimeError(f"podflow traces {agent.ready.get('interfaces')}, not {wanted}")
        return agent, flow_log

    def _start_netobserv(self, workdir: str):
        out_path = os.path.join(workdir, "netobserv.jsonl")
        err_path = os.path.join(workdir, "netobserv.stderr")
        env = {**os.environ, **netobserv_env([*self.veths, "cni0"])}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = self.node.popen([*NETOBSERV_LAUNCH, self.args.peer], env=env,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"netobserv exited with {proc.returncode}:\n"
                                   f"{_tail(err_path)}")
            if ("successfully started" in _tail(err_path)
                    and set(self._netobserv_attaches()) >= {*self.veths, "cni0"}):
                return proc, out_path, err_path
            time.sleep(0.2)
        proc.kill()
        raise RuntimeError(f"netobserv not attached after 60 s:\n{_tail(err_path)}")

    def _netobserv_attaches(self) -> collections.Counter:
        """Attach events per interface name from its metrics (the bpftool here predates tcx
        links and cannot show them). More than one for an interface means two of its
        programs run there, and every packet is counted twice."""
        attaches: collections.Counter = collections.Counter()
        for line in self._scrape().splitlines():
            if (line.startswith("ebpf_agent_interface_events_total")
                    and ('type="attach_tcx"' in line or 'type="attach_tc"' in line)):
                name = line.partition('ifname="')[2].partition('"')[0]
                attaches[name] += int(float(line.rpartition(" ")[2]))
        return attaches

    def _scrape(self) -> str:
        return self.node.run(["curl", "-s", "--max-time", "5",
                              f"http://127.0.0.1:{NETOBSERV_METRICS_PORT}/metrics"],
                             capture_output=True, text=True, check=False).stdout

    def _netobserv_metrics(self) -> tuple[dict, dict]:
        """(dropped flows by source/reason, errors by component/error) from its metrics."""
        dropped, errors = {}, {}
        for line in self._scrape().splitlines():
            for prefix, into in (("ebpf_agent_dropped_flows_total", dropped),
                                 ("ebpf_agent_errors_total", errors)):
                if line.startswith(prefix):
                    labels, _, value = line.rpartition(" ")
                    if float(value):
                        into[labels[len(prefix):]] = int(float(value))
        return dropped, errors

    # -- the run --------------------------------------------------------------------------

    def run(self, agent_name: str, rate: int, seconds: float, profile: str | None) -> RunResult:
        res = RunResult(agent_name, rate, seconds, client_veth=self.client.host_ifname,
                        server_veth=self.server.host_ifname)
        with tempfile.TemporaryDirectory(prefix="pf-churn-", dir=self.args.dir) as workdir:
            sink = self._sink()
            handle = proc = None
            if agent_name == "podflow":
                handle, out_path = self._start_podflow(workdir)
                pid = handle.pid

                def progress():
                    return os.path.getsize(out_path), self._seen(handle)
            else:
                proc, out_path, _err_path = self._start_netobserv(workdir)
                pid = proc.pid

                def progress():
                    return os.path.getsize(out_path)
            try:
                self._measure(res, pid, rate, seconds, profile, progress)
                res.conntrack_drops = _conntrack_drops(self.node) - self._ct0
                if agent_name == "podflow":
                    self._podflow_status(res, handle)
                    t0 = time.monotonic()
                    code = handle.stop(timeout_s=STOP_TIMEOUT_S)
                    res.stop_s = time.monotonic() - t0
                    if code != 0:
                        res.stop_note = f"exit {code}" + (" (SIGKILL)" if code == -9 else "")
                else:
                    res.lost, res.kernel_errors = self._netobserv_metrics()
                    attaches = self._netobserv_attaches()
                    if any(n > 1 for n in attaches.values()):
                        res.notes.append(f"netobserv attached more than once: {dict(attaches)}")
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(STOP_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        res.stop_note = "SIGKILL"
                    res.stop_s = time.monotonic() - t0
            finally:
                report = self._sink_report(sink)
                res.received, res.sink_cpu_s = report["received"], report.get("cpu_s", 0.0)
                if handle is not None:
                    handle.stop(timeout_s=5)
                elif proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if self.args.keep:
                os.makedirs(self.args.keep, exist_ok=True)
                kept = os.path.join(self.args.keep, f"{agent_name}-{rate}.jsonl")
                os.replace(out_path, kept)
                out_path = kept
            res.truth = {k: v - self._truth0[k] for k, v in self._truth().items()}
            if not res.sent:  # the generator was cut short: what entered the client's veth
                res.sent = res.truth[(self.client.host_ifname, "FROM_POD")]
            res.output_bytes = os.path.getsize(out_path)
            if agent_name == "podflow":
                read_podflow_log(out_path, res, self.client.ip, self.server.ip)
            else:
                read_netobserv_output(out_path, res, self.client.ip, self.server.ip)
        return res

    @staticmethod
    def _seen(handle) -> int:
        try:
            return _status(handle.address).seen_flows
        except grpc.RpcError:
            return -1

    def _measure(self, res: RunResult, pid: int, rate: int, seconds: float,
                 profile: str | None, progress) -> None:
        time.sleep(3.0)  # settle: the idle level
        cpu_a, _ = tree_usage(pid)
        time.sleep(2.0)
        cpu_b, res.rss_idle = tree_usage(pid)
        res.idle_cores = (cpu_b - cpu_a) / 2.0
        res.load_before = loadavg()
        self._truth0 = self._truth()
        self._ct0 = _conntrack_drops(self.node)
        sampler = Sampler(pid, self.rss_limit)
        sampler.start()
        spy = None
        if profile:
            cmd = [PY_SPY, "record",
                   "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
                   "--format", "raw", "--threads", "--nonblocking", "--output", profile]
            if self.args.profile_native:
                cmd.append("--native")
            if self.args.profile_gil:
                cmd.append("--gil")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cpu0, t0 = tree_usage(pid)[0], time.monotonic()
        gen = self.client.popen([*TRAFFIC_NICE, sys.executable, "-I", "-S", TRAFFIC_SCRIPT,
                                 "send", self.server.ip, self.client.ip, str(rate),
                                 str(seconds), str(PORT_BASE), str(PORTS)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        while gen.poll() is None:
            if sampler.over_limit.is_set():
                gen.kill()
                res.aborted = True
                res.notes.append(f"ABORTED: RSS passed {self.args.rss_limit_mb} MB after "
                                 f"{time.monotonic() - t0:.0f} s of churn")
                break
            time.sleep(0.2)
        out, err = gen.communicate()
        cpu1, t1 = tree_usage(pid)[0], time.monotonic()
        res.churn_wall_s, res.cpu_churn_s = t1 - t0, cpu1 - cpu0
        res.load_after = loadavg()
        try:
            report = json.loads(out.strip().splitlines()[-1])
            res.sent, res.sent_s, res.max_lag = (report["sent"], report["seconds"],
                                                 report["max_lag_packets"])
            res.generator_cpu_s = report.get("cpu_s", 0.0)
        except (ValueError, IndexError, KeyError):
            res.notes.append(f"generator printed no report: {err.strip()[-500:]}")
        # Drain: the output stops growing, no sooner than the agent can end the last flows.
        drain_min = PODFLOW_DRAIN_MIN_S if res.agent == "podflow" else NETOBSERV_DRAIN_MIN_S
        last, stable_since = progress(), time.monotonic()
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            current = progress()
            if current != last:
                last, stable_since = current, now
            if sampler.over_limit.is_set() and not res.aborted:
                res.aborted = True
                res.notes.append(f"RSS passed {self.args.rss_limit_mb} MB while draining")
            if now - t1 >= drain_min and now - stable_since >= 3.0:
                break
            if now - t1 >= self.args.drain_max or sampler.over_limit.is_set():
                res.drained = False
                break
        cpu2, res.rss_after = tree_usage(pid)
        res.cpu_drain_s, res.drain_s = cpu2 - cpu1, time.monotonic() - t1
        sampler.stop()
        res.rss_peak = max(sampler.peak_rss, res.rss_after)
        if spy is not None:
            try:
                _, spy_err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, spy_err = spy.communicate()
            if spy.returncode != 0:
                res.notes.append(f"py-spy failed: {spy_err.decode(errors='replace')[-300:]}")

    def _podflow_status(self, res: RunResult, handle) -> None:
        try:
            status = _status(handle.address)
        except grpc.RpcError as exc:
            res.notes.append(f"ServerStatus failed: {exc.code().name}")
            return
        from podflow_api.v1 import observer_pb2
        res.lost = {observer_pb2.LostStage.Name(lc.stage): lc.count for lc in status.lost
                    if lc.count}
        res.lost_packets = {observer_pb2.LostStage.Name(lc.stage): lc.packets
                            for lc in status.lost if lc.packets}
        res.kernel_errors = {k: v for k, v in status.datapath_errors.items() if v}


def _tail(path: str, size: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - size))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


# ----------------------------------------------------------------------------- outputs

def _is_churn(src: str, dst: str, dport: int, client_ip: str, server_ip: str) -> bool:
    return src == client_ip and dst == server_ip and PORT_BASE <= dport < PORT_BASE + PORTS


def read_podflow_log(path: str, res: RunResult, client_ip: str, server_ip: str) -> None:
    """One pass over the flow log: records by kind, churn packets, packets per veth and
    direction, lost-events lines by stage."""
    kinds: collections.Counter = collections.Counter()
    counted: collections.Counter = collections.Counter()
    churn_counted: collections.Counter = collections.Counter()
    log_lost: collections.Counter = collections.Counter()
    log_lost_packets: collections.Counter = collections.Counter()
    every_point = True
    sender = (res.client_veth, "FROM_POD")
    receiver = (res.server_veth, "TO_POD")
    sent_by_flow: dict[int, int] = {}  # churn flow (ports) -> its packets at the sender
    received: set[int] = set()         # churn flows with a record at the receiver
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            flow = record.get("flow")
            if flow is None:
                header = record.get("podflow_flow_log")
                if header is not None:
                    every_point = header.get("every_point", True)
                lost = record.get("lost_events")
                if lost is not None:
                    log_lost[lost.get("stage", "?")] += int(lost.get("num_events_lost", 0))
                    log_lost_packets[lost.get("stage", "?")] += int(
                        lost.get("num_packets_lost", 0))
                continue
            res.records += 1
            packets = int(flow.get("packets", 0))
            end = bool(flow.get("flow_end"))
            kinds[("with packets" if packets else "0 packets")
                  + (", flow_end" if end else "")] += 1
            hook = (flow.get("interface", {}).get("name"), flow.get("traffic_direction"))
            if packets and flow.get("observation_point") in ("POD_VETH", "BRIDGE"):
                counted[hook] += packets
            ip = flow.get("ip", {})
            udp = flow.get("l4", {}).get("udp")
            if udp and _is_churn(ip.get("source"), ip.get("destination"),
                                 udp.get("destination_port", 0), client_ip, server_ip):
                res.churn_records += 1
                res.churn_packets += packets
                churn_counted[hook] += packets
                ports = (udp.get("source_port", 0) << 16) | udp.get("destination_port", 0)
                if hook == sender:
                    sent_by_flow[ports] = sent_by_flow.get(ports, 0) + packets
                elif hook == receiver:
                    received.add(ports)
    if not every_point:
        # The flow log wrote the receiver's record of a flow only where it differed from the
        # sender's (agent/export/flowlog.py): the others' packets are in the sender's record.
        # The agent counts them (ServerStatus); the log alone cannot tell a folded record
        # from one lost before the writer (its packets are counted as lost).
        inferred = sum(p for ports, p in sent_by_flow.items() if ports not in received)
        folded = res.kernel_errors.get("flow_log_receiver_packets_folded", inferred)
        res.folded_packets = folded
        churn_counted[receiver] += folded
        counted[receiver] += folded
        res.churn_packets += folded
    res.kinds, res.counted, res.log_lost = dict(kinds), dict(counted), dict(log_lost)
    res.log_lost_packets = dict(log_lost_packets)
    res.churn_counted = dict(churn_counted)
    res.churn_packets_from_pod = churn_counted.get((res.client_veth, "FROM_POD"), 0)


def read_netobserv_output(path: str, res: RunResult, client_ip: str, server_ip: str) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                res.notes.append(f"not JSON: {line[:80]!r}")
                continue
            res.records += 1
            if record.get("Proto") == 17 and _is_churn(record.get("SrcAddr"),
                                                        record.get("DstAddr"),
                                                        record.get("DstPort", 0),
                                                        client_ip, server_ip):
                res.churn_records += 1
                res.churn_packets += int(record.get("Packets", 0))
    res.churn_packets_from_pod = res.churn_packets


# ----------------------------------------------------------------------------- report

def _mb(n: int) -> str:
    return f"{n / MIB:.0f}"


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items())) or "none"


def _exactness(r: RunResult) -> str:
    """yes: every packet in the records; counted: the rest counted lost to the packet."""
    if r.exact:
        return "yes"
    if r.unaccounted == 0:
        return "no, every missing packet counted lost"
    if r.unaccounted is not None:
        return f"**no**, {r.unaccounted:,} packets unaccounted"
    return "**no**"


def print_table(results: list[RunResult]) -> None:
    print("| new flows/s | agent | load avg before -> after | sent (s) | CPU cores (churn) "
          "| CPU-ms/flow | RSS MB idle / peak / after drain | records | records/flow "
          "| bytes/flow | churn packets counted / sent | exact? | lost (by stage) | stop s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        flows = r.sent or 1
        lost = dict(r.lost)
        for stage, n in r.log_lost.items():  # the flow log also counts what its stop lost
            if n > lost.get(stage, 0):
                lost[stage] = n
        for k, v in r.kernel_errors.items():
            if r.agent == "podflow" and "full" in k:
                lost[f"kernel {k}"] = v
        print(f"| {r.rate:,} | {r.agent} | {r.load_before} -> {r.load_after} "
              f"| {r.sent:,} ({r.sent_s:.1f}) | {r.cores:.3f} | {r.cpu_ms_per_flow:.3f} "
              f"| {_mb(r.rss_idle)} / {_mb(r.rss_peak)} / {_mb(r.rss_after)} "
              f"| {r.records:,} | {r.records / flows:.2f} | {r.output_bytes / flows:,.0f} "
              f"| {r.churn_packets_from_pod:,} / {r.sent:,} "
              f"| {_exactness(r)} | {_counts(lost)} "
              f"| {r.stop_s:.1f}{' ' + r.stop_note if r.stop_note else ''} |")


def print_details(results: list[RunResult]) -> None:
    for r in results:
        wall = r.sent_s or 1
        print(f"- {r.rate:,}/s {r.agent}: generator max lag {r.max_lag:,} packets, "
              f"{r.generator_cpu_s / wall:.2f} cores (with the kernel's path of its packets); "
              f"sink received {r.received:,}, {r.sink_cpu_s / wall:.2f} cores; "
              f"drain {r.drain_s:.0f} s{'' if r.drained else ' (NOT drained)'}, "
              f"CPU during drain {r.cpu_drain_s:.1f} s; idle CPU {r.idle_cores:.3f} cores; "
              f"kernel conntrack drops {r.conntrack_drops:,}")
        if r.agent == "podflow":
            print(f"  records by kind: {_counts(r.kinds)}; churn records {r.churn_records:,} "
                  f"(all hooks), churn packets {r.churn_packets:,} (of which "
                  f"{r.folded_packets:,} at the server's veth, held by the client's records: "
                  f"the flow log's one record per pod-to-pod flow)")
            for key in sorted(r.truth):
                mark = "" if r.counted.get(key, 0) == r.truth[key] else "  (differs)"
                print(f"  {key[0]} {key[1]}: churn packets in records "
                      f"{r.churn_counted.get(key, 0):,}, all packets in records "
                      f"{r.counted.get(key, 0):,}, veth counters {r.truth[key]:,}{mark}")
            print(f"  lost (ServerStatus): {_counts(r.lost)}; flow-log lost lines: "
                  f"{_counts(r.log_lost)}; datapath errors: {_counts(r.kernel_errors)}")
            print(f"  lost packets (ServerStatus): {_counts(r.lost_packets)}; flow-log lost "
                  f"lines: {_counts(r.log_lost_packets)}; churn packets sent x 2 hooks "
                  f"{2 * r.sent:,} = in records {r.churn_packets:,} + counted lost "
                  f"{2 * r.sent - r.churn_packets - r.unaccounted:,} "
                  f"+ unaccounted {r.unaccounted:,}")
        else:
            print(f"  churn records {r.churn_records:,}; dropped flows (metrics): "
                  f"{_counts(r.lost)}; errors: {_counts(r.kernel_errors)}; veth counters: "
                  + ", ".join(f"{k[0]} {k[1]} {v:,}" for k, v in sorted(r.truth.items())))
        for note in r.notes:
            print(f"  NOTE: {note}")


def print_ratios(results: list[RunResult]) -> None:
    by_rate: dict[int, dict[str, RunResult]] = collections.defaultdict(dict)
    for r in results:
        by_rate[r.rate][r.agent] = r
    rows = [(rate, d["podflow"], d["netobserv"]) for rate, d in sorted(by_rate.items())
            if "podflow" in d and "netobserv" in d]
    if not rows:
        return
    print("\npodflow / netobserv, same traffic, same run:")
    print("| new flows/s | CPU cores | CPU-ms/flow | RSS peak | records/flow | bytes/flow "
          "| churn packets counted |")
    print("|---|---|---|---|---|---|---|")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b else "-"

    for rate, p, n in rows:
        print(f"| {rate:,} | {ratio(p.cores, n.cores)} | "
              f"{ratio(p.cpu_ms_per_flow, n.cpu_ms_per_flow)} | {ratio(p.rss_peak, n.rss_peak)} "
              f"| {ratio(p.records / (p.sent or 1), n.records / (n.sent or 1))} "
              f"| {ratio(p.output_bytes, n.output_bytes)} "
              f"| {p.churn_packets_from_pod:,} of {p.sent:,} vs {n.churn_packets:,} of "
              f"{n.sent:,} |")


def summarize_profile(path: str, top: int = 25) -> None:
    """py-spy's raw (collapsed) stacks -> functions by own and by total samples, and
    samples per thread."""
    own: collections.Counter = collections.Counter()
    own_lines: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    samples = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            samples += n
            frames = stack.split(";")
            named = [f for f in frames if not f.startswith(("process ", "thread "))]
            thread = next((f for f in frames if f.startswith("thread ")), "?")
            threads[thread] += n
            if not named:
                continue
            funcs = [_function(f) for f in named]
            own[funcs[-1]] += n
            own_lines[named[-1]] += n
            for func in set(funcs):
                total[func] += n
    if not samples:
        print(f"profile {path}: no samples")
        return
    print(f"\npy-spy profile {path}: {samples:,} samples at 100 Hz of the threads py-spy saw "
          "active (running or runnable: on this shared machine more than the CPU they got)")
    print("samples by thread: " + ", ".join(f"{t} {n * 100 / samples:.0f}%"
                                            for t, n in threads.most_common(8)))
    for title, counter, count in (("functions by own", own, top),
                                  ("functions by total (inclusive)", total, top),
                                  ("lines by own", own_lines, top // 2)):
        print(f"\ntop {count} {title} samples:")
        for func, n in counter.most_common(count):
            print(f"  {n * 100 / samples:5.1f}%  {n:7,}  {func}")


def _function(frame: str) -> str:
    """'name (path/to/file.py:123)' -> 'name (file.py)': one entry per function."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{name} ({short})"


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="2000,10000,50000",
                        help="new flows per second, comma-separated (default 2000,10000,50000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="churn per rate (default 60)")
    parser.add_argument("--peer", metavar="PATH",
                        help="also run netobserv-ebpf-agent (this binary) alone on the same "
                             "traffic after podflow, and print the ratios")
    parser.add_argument("--peer-only", action="store_true", help="run only the peer")
    parser.add_argument("--agent-args", default="", metavar="ARGS",
                        help="more `podflow agent` flags (also PF_BENCH_AGENT_ARGS)")
    parser.add_argument("--profile", metavar="PATH",
                        help="record the podflow agent with py-spy (raw stacks) at "
                             "--profile-rate and print its top functions")
    parser.add_argument("--profile-rate", type=int, default=10000)
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native")
    parser.add_argument("--profile-gil", action="store_true",
                        help="py-spy --gil: only the thread holding the GIL (the one Python "
                             "interpreter all stages share)")
    parser.add_argument("--notrack", action="store_true",
                        help="exempt the churn from the node's conntrack (raw NOTRACK)")
    parser.add_argument("--rss-limit-mb", type=int, default=4096,
                        help="stop a run whose agent passes this RSS (default 4096)")
    parser.add_argument("--drain-max", type=float, default=120.0,
                        help="longest wait for the agent to catch up after the churn (s)")
    parser.add_argument("--dir", default="/var/tmp",
                        help="where the flow logs are written (and removed) (default /var/tmp)")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep each run's output (flow log, netobserv's JSON lines) in DIR "
                             "as AGENT-RATE.jsonl (gigabytes at high rates)")
    args = parser.parse_args(argv)
    try:
        rates = [int(r.replace("_", "")) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates: not a list of integers: {args.rates!r}")
    if not rates or any(r <= 0 for r in rates):
        parser.error(f"--rates: rates must be positive: {args.rates!r}")
    if args.peer and not os.access(args.peer, os.X_OK):
        parser.error(f"--peer: {args.peer} is not an executable file")
    if args.peer_only and not args.peer:
        parser.error("--peer-only needs --peer")
    if args.profile and not os.access(PY_SPY, os.X_OK):
        parser.error(f"--profile needs py-spy at {PY_SPY}: .venv/bin/pip install py-spy")
    if args.seconds * max(rates) > PORTS * 64512:
        parser.error(f"--seconds x rate exceeds the {PORTS * 64512:,} distinct 5-tuples")

    from agent.lab import Lab

    bench = Bench(args)
    agents = ([] if args.peer_only else ["podflow"]) + (["netobserv"] if args.peer else [])
    results: list[RunResult] = []
    conntrack = ("churn NOTRACK" if args.notrack
                 else f"node UDP conntrack timeout {NODE_CT_UDP_TIMEOUT_S} s")
    print(f"podflow churn benchmark: {', '.join(f'{r:,}' for r in rates)} new UDP flows/s, "
          f"{args.seconds:g} s each, one packet per 5-tuple, client -> server pod on one "
          f"bridge node; load average {loadavg()} on {os.cpu_count()} CPUs; podflow flags: "
          f"{' '.join(PODFLOW_ARGS + tuple(bench.extra_args))}; {conntrack}", flush=True)
    with Lab(f"churn{os.getpid() % 10000}") as lab:
        bench.build(lab)
        for rate in rates:
            for name in agents:
                profile = (args.profile if name == "podflow" and args.profile
                           and rate == args.profile_rate else None)
                res = bench.run(name, rate, args.seconds, profile)
                if profile:
                    res.notes.append(f"py-spy attached during the churn ({profile})")
                results.append(res)
                print(f"  done: {rate:,}/s {name}: {res.cores:.3f} cores, "
                      f"{res.records:,} records, peak RSS {_mb(res.rss_peak)} MB, "
                      f"load {loadavg()}", flush=True)
                time.sleep(NODE_CT_UDP_TIMEOUT_S + 1)  # conntrack entries of this run expire
    print()
    print_table(results)
    print()
    print_details(results)
    print_ratios(results)
    if args.profile and os.path.exists(args.profile):
        summarize_profile(args.profile)
    # Like bench.datapath: a podflow run that missed packets it did not count as lost, never
    # caught up or was stopped for its memory fails the benchmark (the table says which).
    return 0 if all((r.exact or r.unaccounted == 0) and r.drained and not r.aborted
                    for r in results if r.agent == "podflow") else 1


if __name__ == "__main__":
    sys.exit(main())
