"""`podflow tui`: flags and entry point of the terminal UI."""

from __future__ import annotations

import argparse
import os
import sys

from agent.client.channel import TLSOptions, add_tls_arguments, normalize_address
from agent.errors import ConfigError
from tui.filterexpr import FilterError, parse_filter

try:
    from agent.client.deploy_names import (AGENT_LABEL_SELECTOR, GRPC_PORT, GRPC_PORT_NAME,
                                       NAMESPACE)
except ImportError:  # pragma: no cover - the values the chart uses
    AGENT_LABEL_SELECTOR = "app.kubernetes.io/name=podflow,app.kubernetes.io/component=agent"
    GRPC_PORT, GRPC_PORT_NAME, NAMESPACE = 4245, "grpc", "podflow"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("sources (any mix, at least one)")
    src.add_argument("--server", action="append", default=[], metavar="HOST:PORT|unix:PATH",
                     help="an agent's Observer address (repeatable)")
    src.add_argument("--file", action="append", default=[], metavar="PATH",
                     help="replay a flow log, .jsonl or .jsonl.gz (repeatable)")
    src.add_argument("--kubernetes", action="store_true",
                     help="find agent pods through the Kubernetes API and reach each one "
                          "through the API server's port-forward")
    src.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    src.add_argument("--context", help="kubeconfig context (default: the current one)")
    src.add_argument("--namespace", default=NAMESPACE,
                     help=f"namespace of the agent pods (default {NAMESPACE})")
    src.add_argument("--selector", default=AGENT_LABEL_SELECTOR,
                     help=f"label selector of the agent pods (default {AGENT_LABEL_SELECTOR})")
    parser.add_argument("--metadata", metavar="kubernetes|FILE|none",
                        help="the cluster's NetworkPolicies for the Policies view (5): the "
                             "Kubernetes API (needs `list networkpolicies` at cluster scope), "
                             "a FILE as `kubectl get networkpolicies -A -o json` or the agents' "
                             "metadata file, or none (default: kubernetes with --kubernetes, "
                             "else none)")
    parser.add_argument("--history", type=int, default=1000, metavar="N",
                        help="flows asked from each agent's history on connect (default 1000)")
    parser.add_argument("--max-flows", type=int, default=10_000, metavar="N",
                        help="flow records kept for the Flows view and export (default 10000)")
    parser.add_argument("--filter", default="", metavar="EXPR",
                        help="initial filter, same language as the / key (e.g. 'ns=shop !proto=udp')")
    parser.add_argument("--export-dir", default=".", metavar="DIR",
                        help="where the e key writes its JSON-lines files (default: here)")
    parser.add_argument("--ctrl-c-quits", action="store_true",
                        help="quit on Ctrl-C as well as q and ctrl+q (podflow demo uses it)")
    add_tls_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tui.app import create_app
    from tui.config import AppConfig, KubernetesOptions

    if not (args.server or args.file or args.kubernetes):
        print("podflow tui: give at least one --server, --file or --kubernetes", file=sys.stderr)
        return 2
    if args.history < 0:
        print(f"podflow tui: --history must be >= 0, got {args.history}", file=sys.stderr)
        return 2
    if args.max_flows < 1:
        print(f"podflow tui: --max-flows must be >= 1, got {args.max_flows}", file=sys.stderr)
        return 2
    try:
        parse_filter(args.filter)
    except FilterError as exc:
        print(f"podflow tui: --filter: {exc}", file=sys.stderr)
        return 2
    try:
        for address in args.server:
            normalize_address(address)
        tls = TLSOptions.from_args(args)
    except ConfigError as exc:
        print(f"podflow tui: {exc}", file=sys.stderr)
        return 2
    for path in args.file:
        if not os.path.isfile(path):
            print(f"podflow tui: --file: no such file {path}", file=sys.stderr)
            return 2
    metadata = args.metadata or ("kubernetes" if args.kubernetes else "none")
    if metadata not in ("kubernetes", "none") and not os.path.isfile(metadata):
        print(f"podflow tui: --metadata {metadata}: not `kubernetes`, `none` or an existing "
              "file", file=sys.stderr)
        return 2
    k8s = None
    if args.kubernetes:
        k8s = KubernetesOptions(context=args.context, kubeconfig=args.kubeconfig,
                                namespace=args.namespace,
                                selector=args.selector, port_name=GRPC_PORT_NAME, port=GRPC_PORT)
    app = create_app(AppConfig(servers=args.server, files=args.file, kubernetes=k8s,
                               history=args.history, max_flows=args.max_flows,
                               export_dir=args.export_dir, initial_filter=args.filter,
                               tls=tls if tls.enabled else None, engine="process",
                               ctrl_c_quits=args.ctrl_c_quits,
                               metadata=None if metadata == "none" else metadata))
    app.run()
    return 0
