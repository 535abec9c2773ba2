"""The pure core: values, parsing, planning. No I/O; imports neither kubernetes nor pyroute2."""
