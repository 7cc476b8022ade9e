"""The inline SPICE proxy: an asyncio loop around the sans-I/O protocol layer.

- :mod:`gateway.proxy.config`: the TOML configuration (this host, keyring, peers, routes, limits);
- :mod:`gateway.proxy.server`: listeners and connections (``run_proxy``);
- :mod:`gateway.proxy.relay`: the two protocol legs of a connection, one receive buffer for all;
- :mod:`gateway.proxy.channel`: what happens to each SPICE event of one channel connection;
- :mod:`gateway.proxy.sessions`: which connections form one client session and migration.

The submodules are imported on use; importing this package starts nothing.
"""
