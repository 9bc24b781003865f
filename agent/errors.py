"""podflow's exception hierarchy. Library errors are wrapped with their cause kept
(`raise AttachError(ifname) from exc`) so messages name what failed and why."""


class PodflowError(Exception):
    """Base of every error podflow reports to a user."""


class ConfigError(PodflowError):
    """A flag or configuration value is wrong; the message names it."""


class DatapathError(PodflowError):
    """eBPF programs could not be compiled, loaded or read."""


class AttachError(DatapathError):
    """One interface could not be attached; the others keep working."""


class MetadataError(PodflowError):
    """Kubernetes metadata could not be read (RBAC, file, API server)."""


class ExportError(PodflowError):
    """The flow log could not be written."""


# ---- the lab (agent/lab/): network-namespace clusters for tests, benchmarks and the demo

class LabError(PodflowError):
    """The lab could not build, run or remove something; the message says what."""


class LabBusyError(LabError):
    """Another live process owns a lab with the same id."""

    def __init__(self, message: str, owner_pid: int):
        super().__init__(message)
        self.owner_pid = owner_pid


# -- filters (agent/filters, the TUI's `/` line) ----------------------------------------------

class FilterError(PodflowError, ValueError):
    """A filter value that cannot be understood: a FlowFilter field of a request or of the flow
    log, an `observe` flag's value, or a term of the TUI's `/` line. The message starts with
    where ("allowlist[0].source_ip: ...", "port=x: ..."). Also a ValueError, as it was before
    the hierarchy, so callers that catch ValueError keep working."""


# -- the client side (agent/client) ------------------------------------------------------------

class RequestRejected(PodflowError):
    """An agent refused the request itself (INVALID_ARGUMENT): retrying cannot help."""

    def __init__(self, address: str, details: str):
        super().__init__(f"{address}: {details}")
        self.address = address
        self.details = details


# --- the agent's stages (config-stage): errors that were defined where they are raised ------


class BtfError(DatapathError):
    """The BTF blob is missing, malformed, or lacks a struct/member/enum podflow needs."""


class TcxUnsupported(AttachError):
    """The kernel has no tcx links (before 6.6): the datapath falls back to clsact + cls_bpf."""


class DnsDecodeError(PodflowError, ValueError):
    """The bytes are not a DNS message; the reason names what was wrong and where. Counted
    (`dns_malformed`), never fatal."""


class ObjectError(MetadataError, ValueError):
    """A Kubernetes object lacks a field podflow cannot do without (e.g. metadata.name)."""


class ConntrackError(MetadataError, OSError):
    """The conntrack table could not be opened (no CAP_NET_ADMIN, no nf_conntrack); an
    OSError too, so its errno is kept. The agent then runs without Service translations."""


class InvalidRequest(PodflowError, ValueError):
    """A GetFlowsRequest that cannot be served; the message names the field (the Observer
    answers INVALID_ARGUMENT with it)."""


# -- NetworkPolicy (agent/policy) --------------------------------------------------------------

class PolicyError(PodflowError, ValueError):
    """One NetworkPolicy (or document) is malformed: names the object and the field. A
    ValueError too: a bad value in a file the user wrote."""

    def __init__(self, obj: str, path: str, message: str) -> None:
        self.obj = obj          # "NetworkPolicy ns/name", or "document 3" when it has no name
        self.path = path        # e.g. "spec.ingress[0].ports[1].port"; "" for the whole object
        self.message = message
        super().__init__(f"{obj}: {path}: {message}" if path else f"{obj}: {message}")
