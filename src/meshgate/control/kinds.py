"""The kinds of policy the control plane stores (light: the CLI's parser needs them
without loading the CA's cryptography)."""

KINDS: tuple[str, ...] = ("authz", "defaults", "upstream", "route")
