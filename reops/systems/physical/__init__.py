"""Physical machines: power and reachability over SSH, Wake-on-LAN."""
