"""L6: a local fleet for demos and tests: real sshd hosts, agents."""
