"""What every side of Schooner shares: wire protocol, types, defaults, errors, topology, Redis keys.

Importing it needs only numpy, pyzmq and msgpack (replica images have no more).
"""

__version__ = "0.2.0"
