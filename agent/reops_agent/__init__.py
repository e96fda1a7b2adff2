"""reops-agent: a small daemon that keeps one ZeroMQ connection to the reops hub.

It depends on pyzmq and msgspec only, so it installs alone on any host with Python 3.11+.
"""

__version__ = "0.1.0"
