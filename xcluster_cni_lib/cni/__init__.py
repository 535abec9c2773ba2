"""The CNI protocol, pure: versions, error codes and objects, ``CNI_ARGS``, env checks and
result conversion. No I/O, and nothing heavy: the IPAM plugins import it on every call."""
