"""L1: the local control protocol between the hub and its clients, and the client."""
