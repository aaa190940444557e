"""Runs moto's S3-compatible server on 127.0.0.1 and a port the OS picks; prints the port, serves until stdin
closes (so it also ends when the test process dies)."""

import sys

from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
