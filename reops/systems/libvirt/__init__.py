"""libvirt hypervisors: connection, events, pools, domain XML."""
