"""The native data plane: mesh as the control plane of a proxy engine (HAProxy) that serves loaded models itself.

routes.py          which models the engine routes natively, computed from placement (no I/O)
driver.py          what mesh asks of an engine: instances, routes, usage, a copy's requests in flight
haproxy_config.py  HAProxy's configuration, rendered from settings (no I/O)
haproxy_api.py     HAProxy's runtime API (its admin socket): commands, map edits, stick-table reads
haproxy.py         the HAProxy engine: its process, its backends for instances, its maps
control.py         the control loop: routes follow placement, usage flows back, copies drain before unload
"""
