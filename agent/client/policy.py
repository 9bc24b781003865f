"""`podflow policy`: NetworkPolicies advised from observed traffic, and what a policy change
would do to it.

    podflow policy advise [--namespace NS] [--since 1h] (--server A ... | --file F ...)
    podflow policy what-if FILE.yaml [--since 1h] (--server A ... | --file F ...)

Both read connections from live agents (`--server`: each agent's history, merged by
agent.client.merge) or from flow logs (`--file`, agent.wire.logformat's reader, gzip or
not), and the cluster's objects and current policies from `--metadata kubernetes|FILE|none`
(agent.policy.metadata: the agent's own sources, read once). The work is agent.policy's
(facts, advise, whatif); this module is the command: flags, reading, printing, exit status.

advise prints YAML for `kubectl apply -f -` on stdout. what-if prints which recorded
connections the candidates would newly deny or allow, with counts and last seen, and exits
1 when any would be denied, 2 when the candidate file has errors (each named with its
field; the rest is still evaluated), 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.client.channel import TLSOptions, add_tls_arguments
from agent.client.merge import MergedFlows
from agent.client.printer import format_notice
from agent.errors import ConfigError, MetadataError, PolicyError, RequestRejected
from agent.policy.advise import advise
from agent.policy.facts import ConnectionFact, facts_from_flows
from agent.policy.load import load_policy_file
from agent.policy.metadata import ClusterInfo, list_policies, load_cluster, require_policies
from agent.policy.whatif import what_if
from agent.wire.flowtext import rule_text
from agent.wire.logformat import FlowLogReader
from agent.wire.timefmt import parse_time, timestamp, ts_ns
from podflow_api.v1 import flow_pb2, observer_pb2


# -- the policies themselves, for the TUI's Policies view ---------------------------------------

@dataclass(frozen=True)
class PolicyCatalog:
    """Every NetworkPolicy of the cluster and its rules (flowtext.rule_text), so a screen can
    list policies no traffic touched and rules nothing used. Plain data (it crosses into the
    TUI's engine process)."""

    source: str
    rules: dict[str, tuple[str, ...]] = field(default_factory=dict)   # "ns/name" -> rules
    problems: tuple[str, ...] = ()     # objects that could not be read, each named
    error: str = ""                    # why the policies could not be read at all


def load_catalog(source: str, kubeconfig: str | None = None,
                 context: str | None = None) -> PolicyCatalog:
    """The cluster's NetworkPolicies from --metadata kubernetes|FILE (for kubernetes, one
    list of networkpolicies: that is all the RBAC it needs); never raises: what went wrong
    is in `error`."""
    try:
        loaded = list_policies(source, kubeconfig=kubeconfig, context=context)
    except (ConfigError, MetadataError) as exc:
        return PolicyCatalog(source, error=str(exc))
    rules = {}
    for policy in loaded.policies:
        rules[policy.ref] = tuple(
            [rule_text(policy.ref, "ingress", i) for i in range(len(policy.ingress))]
            + [rule_text(policy.ref, "egress", i) for i in range(len(policy.egress))])
    return PolicyCatalog(source, rules, tuple(str(p) for p in loaded.problems))


# -- the command ---------------------------------------------------------------------------------

def _sources(parser: argparse.ArgumentParser) -> None:
    flows = parser.add_argument_group("where the connections come from (any mix, at least one)")
    flows.add_argument("--server", action="append", default=[], metavar="HOST:PORT|unix:PATH",
                       help="an agent: every flow it holds (repeatable)")
    flows.add_argument("--file", action="append", default=[], metavar="PATH",
                       help="a flow log, .jsonl or .jsonl.gz (repeatable)")
    flows.add_argument("--since", type=parse_time, metavar="1h|RFC3339",
                       help="only connections seen from this time on")
    cluster = parser.add_argument_group("the cluster's objects and current policies")
    cluster.add_argument("--metadata", default="kubernetes", metavar="kubernetes|FILE|none",
                         help="the Kubernetes API (default), a FILE as `kubectl get pods,"
                              "services,endpointslices,nodes,namespaces,networkpolicies -A -o "
                              "json` prints it, or none (only what the flows recorded)")
    cluster.add_argument("--kubeconfig", metavar="PATH",
                         help="kubeconfig for --metadata kubernetes (default: $KUBECONFIG or "
                              "~/.kube/config)")
    cluster.add_argument("--context", help="kubeconfig context (default: the current one)")
    add_tls_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    adv = sub.add_parser(
        "advise", help="least-privilege NetworkPolicies for the workloads seen, as YAML",
        description="Least-privilege NetworkPolicies per workload from the connections seen: "
                    "YAML for `kubectl apply -f -` on stdout. Review it: traffic that was not "
                    "seen will be denied.")
    adv.add_argument("--namespace", "-n", metavar="NS",
                     help="only workloads of this namespace (default: every namespace)")
    _sources(adv)
    adv.set_defaults(_run=run_advise)
    wif = sub.add_parser(
        "what-if", help="which recorded connections policies in FILE would deny or allow",
        description="The current policies plus those in FILE (added, or replacing the one of "
                    "the same namespace/name), against the connections seen: which would newly "
                    "be denied or allowed. Exit status 1 when any would be denied, 2 when FILE "
                    "has errors, else 0.")
    wif.add_argument("policy_file", metavar="FILE.yaml",
                     help="NetworkPolicies (YAML or JSON, `---` separated documents, Lists)")
    wif.add_argument("--namespace", "-n", metavar="NS", default="default",
                     help="namespace of the FILE's policies that name none (default: default)")
    _sources(wif)
    wif.set_defaults(_run=run_what_if)


def run(args: argparse.Namespace) -> int:
    return args._run(args)


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr, flush=True)


def read_flows(args: argparse.Namespace, counts: dict) -> Iterator[flow_pb2.Flow]:
    """Every flow of the --file logs and --server agents (from --since on). Agents that
    cannot be reached, lost flows and unreadable lines are said on stderr and counted."""
    since_ns = args.since or 0
    for path in args.file:
        reader = FlowLogReader(path)
        try:
            for resp in reader:
                if resp.HasField("flow") and ts_ns(resp.flow.time) >= since_ns:
                    counts["flows"] += 1
                    yield resp.flow
        except (OSError, EOFError) as exc:
            raise ConfigError(f"--file {path}: cannot read: {exc}") from exc
        if reader.malformed:
            _warn(f"{path}: {reader.malformed} lines are not flow records")
    if not args.server:
        return
    request = observer_pb2.GetFlowsRequest()
    if args.since is not None:
        request.since.CopyFrom(timestamp(args.since))
    merged = MergedFlows(args.server, request, tls=TLSOptions.from_args(args), reconnect=False)
    try:
        for resp in merged:
            if resp.HasField("flow"):
                counts["flows"] += 1
                yield resp.flow
            else:
                _warn(format_notice(resp).removeprefix("WARNING: "))
                if resp.HasField("node_status") and \
                        resp.node_status.state == observer_pb2.NODE_UNAVAILABLE:
                    counts["unreachable"] += 1
    finally:
        merged.close()


def _facts(args: argparse.Namespace) -> tuple[list[ConnectionFact], dict]:
    counts = {"flows": 0, "unreachable": 0}
    facts = facts_from_flows(read_flows(args, counts))
    return facts, counts


def _cluster(args: argparse.Namespace) -> ClusterInfo:
    info = load_cluster(args.metadata, kubeconfig=args.kubeconfig, context=args.context)
    for warning in info.warnings:
        _warn(warning)
    for problem in info.problems:
        _warn(f"the cluster's {problem} (left out)")
    return info


def _check(args: argparse.Namespace, prog: str) -> str | None:
    if not args.server and not args.file:
        return "give at least one --server or --file to read connections from"
    if args.kubeconfig or args.context:
        if args.metadata != "kubernetes":
            return f"--kubeconfig/--context need --metadata kubernetes, not {args.metadata!r}"
    return None


def _fail(prog: str, exc: Exception | str, status: int = 2) -> int:
    print(f"podflow policy {prog}: {exc}", file=sys.stderr)
    return status


def run_advise(args: argparse.Namespace) -> int:
    problem = _check(args, "advise")
    if problem:
        return _fail("advise", problem)
    try:
        info = _cluster(args)
        facts, counts = _facts(args)
    except (ConfigError, MetadataError, PolicyError) as exc:
        return _fail("advise", exc)
    except RequestRejected as exc:
        return _fail("advise", f"server {exc.address} rejected the request: {exc.details}")
    if not facts:
        return _fail("advise", f"no connections to advise from ({counts['flows']} flow records "
                               "read)", 1)
    advice = advise(info.with_backends(facts), args.namespace)
    sys.stdout.write(advice.yaml())
    print(f"podflow policy advise: {len(advice.policies)} policies from {len(facts)} connection "
          f"shapes ({sum(f.count for f in facts)} connections, {counts['flows']} flow records)",
          file=sys.stderr)
    return 1 if counts["unreachable"] else 0


def run_what_if(args: argparse.Namespace) -> int:
    problem = _check(args, "what-if")
    if problem:
        return _fail("what-if", problem)
    try:
        candidates = load_policy_file(args.policy_file, default_namespace=args.namespace)
        info = _cluster(args)
        require_policies(info)
        facts, counts = _facts(args)
    except (ConfigError, MetadataError, PolicyError) as exc:
        return _fail("what-if", exc)
    except RequestRejected as exc:
        return _fail("what-if", f"server {exc.address} rejected the request: {exc.details}")
    if not candidates.policies and not candidates.problems:
        return _fail("what-if", f"{args.policy_file}: no NetworkPolicy in it")
    result = what_if(info.policies, candidates.policies, facts, cluster=info.view(),
                     problems=candidates.problems)
    sys.stdout.write(result.report())
    if counts["unreachable"]:
        _warn(f"{counts['unreachable']} agents could not be reached: their connections are "
              "not in this answer")
    if result.newly_denied:
        return 1
    return 2 if candidates.problems else 0
